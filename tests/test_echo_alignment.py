"""Switching echo cancellation on and off never inserts, drops or shifts a sample.

AEC3 hands each block back 128 samples late. The canceller keeps that lag constant (a
delay line while bypassed, and a refill of the engine when it comes back on), so the
sample positions the wake word, the VAD gate and the uplink use stay exact; and until
AEC3 has settled on real playback the uplink gets the raw microphone, so a wake cue
cannot blank the first words of a one-breath question.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from edge_agent.audio.ears import Ears, EarsConfig
from edge_agent.audio.echo import AEC3_LATENCY_SAMPLES, Aec3EchoCanceller, EchoOutput
from edge_agent.core.events import UplinkAudio
from edge_agent.core.policy import AgentState, BargeInRules, Uplink, decide

BLOCK = 160
RATE = 16000


class LaggingFakeEngine:
    """Halves the mic and hands it back `lag` samples late, as AEC3 does (a FIFO)."""

    def __init__(self, lag: int) -> None:
        self.fifo = np.zeros(lag, dtype=np.int16)

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        buf = np.concatenate((self.fifo, near))
        self.fifo = buf[near.size :]
        return (buf[: near.size] // 2).astype(np.int16)


def _reference(n: int, bursts: list[tuple[int, int]], seed: int = 1) -> np.ndarray:
    ref = np.zeros(n, dtype=np.int16)
    rng = np.random.default_rng(seed)
    for a, b in bursts:
        ref[a:b] = (rng.standard_normal(b - a) * 2000).astype(np.int16)
    return ref


def _run(aec: Aec3EchoCanceller, mic: np.ndarray, ref: np.ndarray) -> list[EchoOutput]:
    return [aec.process(mic[i : i + BLOCK], ref[i : i + BLOCK]) for i in range(0, mic.size, BLOCK)]


def test_every_sample_stays_in_place_across_switches_with_a_lagging_engine() -> None:
    lag = 128
    aec = Aec3EchoCanceller(LaggingFakeEngine(lag), idle_bypass_ms=200, latency_samples=lag)
    n = RATE * 3
    mic = (np.arange(n) % 20000 - 10000).astype(np.int16)  # every sample tells where it is
    ref = _reference(n, [(8000, 9600), (16000, 16160), (30000, 40000)])
    outs = _run(aec, mic, ref)
    delayed = np.concatenate((np.zeros(lag, dtype=np.int16), mic[:-lag]))
    raw = np.concatenate([o.raw for o in outs])
    assert np.array_equal(raw, delayed)
    switches = 0
    for k, out in enumerate(outs):
        want = delayed[k * BLOCK : (k + 1) * BLOCK]
        bypassed = out.cleaned is out.raw
        resumed = k > 0 and not bypassed and outs[k - 1].cleaned is outs[k - 1].raw
        expected = want if bypassed else want // 2
        if resumed:
            # The engine's first `lag` samples are stale (from its last active period):
            # the delay line's stand in their place, the rest is the engine's.
            expected = np.concatenate((want[:lag], want[lag:] // 2))
        assert np.array_equal(out.cleaned, expected), f"block {k} (bypassed {bypassed})"
        if k and bypassed != (outs[k - 1].cleaned is outs[k - 1].raw):
            switches += 1
    assert switches >= 5  # warm-up end, and on/off around each burst


def test_real_aec3_lags_by_the_pinned_latency() -> None:
    """If pywebrtc-audio ever changes its framing, this says so before positions drift."""
    aec = Aec3EchoCanceller.create()
    rng = np.random.default_rng(0)
    mic = (rng.standard_normal(RATE) * 3000).astype(np.int16)
    out = np.concatenate([o.cleaned for o in _run(aec, mic, np.zeros_like(mic))])
    seg = mic[4000:8000].astype(np.float64)
    scores = [
        float(np.dot(seg, out[4000 + d : 8000 + d].astype(np.float64))) for d in range(0, 400)
    ]
    assert int(np.argmax(scores)) == AEC3_LATENCY_SAMPLES == aec.latency_samples


def _best_lag(cleaned: np.ndarray, mic: np.ndarray, start: int) -> int:
    """Where in the mic this cleaned block matches best, relative to its label `start`."""
    seg = cleaned.astype(np.float64)
    return max(
        range(-40, 41),
        key=lambda d: float(np.dot(seg, mic[start + d : start + d + seg.size].astype(np.float64))),
    )


def test_real_aec3_switching_on_and_off_keeps_positions_exact() -> None:
    aec = Aec3EchoCanceller.create(idle_bypass_ms=200)
    n = RATE * 4
    rng = np.random.default_rng(3)
    mic = (rng.standard_normal(n) * 3000).astype(np.int16)  # the user, no echo in it
    ref = _reference(n, [(16000, 19200), (40000, 41600)])  # playback on and off, twice
    outs = _run(aec, mic, ref)
    lag = aec.latency_samples
    raw = np.concatenate([o.raw for o in outs])
    assert np.array_equal(raw[lag:], mic[:-lag])
    # The blocks right around every switch: the cleaned audio is the mic at its label.
    # (Before the fix, switching on replayed 128 samples from the last active period
    # and switching off dropped 128 samples: a shift of 128 either way.)
    checked = 0
    for k in range(2, len(outs) - 3):
        was, now = outs[k - 1].cleaned is outs[k - 1].raw, outs[k].cleaned is outs[k].raw
        if was == now:
            continue
        for j in range(k, k + 3):
            start = j * BLOCK - lag
            assert _best_lag(outs[j].cleaned, mic, start) == 0, (k, j)
            checked += 1
    assert checked >= 4 * 3


def test_a_cue_alone_never_settles_the_canceller_but_a_reply_does() -> None:
    aec = Aec3EchoCanceller(LaggingFakeEngine(0), idle_bypass_ms=1000, settle_ms=500)
    n = RATE * 6
    mic = np.zeros(n, dtype=np.int16)
    cue = (2 * RATE, 2 * RATE + 3600)  # a 225 ms wake cue after the warm-up
    reply = (4 * RATE, 5 * RATE)  # a one-second reply
    outs = _run(aec, mic, _reference(n, [cue, reply]))
    settled = np.array([o.settled for o in outs])
    assert not settled[: reply[0] // BLOCK].any()
    first = int(np.flatnonzero(settled)[0]) * BLOCK
    assert first == reply[0] + 500 * RATE // 1000 - BLOCK  # after 500 ms of playback
    assert settled[reply[1] // BLOCK : reply[1] // BLOCK + 50].all()  # the echo tail too
    assert not settled[-1]  # back to bypass: the next cue starts unsettled again


class NoWake:
    def process(self, samples: np.ndarray, start_sample: int) -> list:
        return []


def test_ears_uplink_holds_every_mic_sample_at_its_position_across_switches() -> None:
    """A known signal through the ears (real AEC3) while short playback bursts switch
    the canceller on and off: the uplinked audio is the mic, sample for sample, at the
    positions the events name."""
    ears = Ears(
        wake=NoWake(),
        is_speech=lambda frame: True,  # our own VAD adapter's decision, pinned
        echo=Aec3EchoCanceller.create(idle_bypass_ms=200),
        config=EarsConfig(),
    )
    n = RATE * 4
    rng = np.random.default_rng(5)
    mic = (rng.standard_normal(n) * 2000).astype(np.int16)
    ref = _reference(n, [(12000, 15600), (30000, 33600), (48000, 49600)])  # cue-length
    ears.apply(decide(AgentState.LISTENING, BargeInRules(), uplink=Uplink(0, 1)))
    pieces: deque[UplinkAudio] = deque()
    for i in range(0, n, BLOCK):
        pieces.extend(
            e
            for e in ears.process(mic[i : i + BLOCK], ref[i : i + BLOCK], i)
            if isinstance(e, UplinkAudio)
        )
    assert pieces
    covered = 0
    for piece in pieces:
        got = np.frombuffer(piece.pcm, dtype="<i2")
        start = piece.start_sample
        if start < 0:  # the delay line's first samples precede the stream
            got, start = got[-start:], 0
        assert np.array_equal(got, mic[start : start + got.size]), start
        covered += got.size
    assert covered >= n - RATE // 2  # nearly everything went up (the gate was open)


@pytest.mark.parametrize("settle_ms", [500])
def test_after_settling_the_uplink_is_the_cleaned_audio(settle_ms: int) -> None:
    aec = Aec3EchoCanceller(LaggingFakeEngine(0), idle_bypass_ms=1000, settle_ms=settle_ms)
    n = RATE * 3
    mic = np.full(n, 1000, dtype=np.int16)
    outs = _run(aec, mic, _reference(n, [(RATE, 3 * RATE)]))
    late = outs[2 * RATE // BLOCK]
    assert late.settled and np.array_equal(late.cleaned, mic[:BLOCK] // 2)


class Bursts:
    """output_source stand-in: short 24 kHz bursts (cue-length), so AEC3 switches on
    and off several times while the mic streams."""

    def __init__(self, every_s: float = 0.7, length_s: float = 0.15) -> None:
        self.every = round(every_s * 24000)
        self.length = round(length_s * 24000)
        self.pos = 0
        self.rng = np.random.default_rng(9)

    def __call__(self, n: int) -> np.ndarray:
        out = np.zeros(n, np.int16)
        phase = (self.pos + np.arange(n)) % self.every
        on = (phase >= self.every // 2) & (phase < self.every // 2 + self.length)
        out[on] = (self.rng.standard_normal(int(on.sum())) * 3000).astype(np.int16)
        self.pos += n
        return out


@pytest.mark.timeout(120)
def test_through_the_engine_switching_echo_cancellation_keeps_every_sample_in_place(
    tmp_path,
) -> None:
    """A known signal streams through the real AudioEngine (full duplex over the ALSA
    rig), the capture pipeline and the ears with real AEC3, while playback bursts
    switch the canceller on and off: every uplinked sample is the one fed to the mic at
    the position its event names."""
    import threading
    import time

    from edge_agent.audio.capture import CapturePipeline
    from edge_agent.audio.engine import AudioEngine
    from edge_agent.audio.supervisor import EngineState
    from edge_agent_devkit.rig.alsa_rig import AlsaRig

    rate = 16000
    mic = (np.random.default_rng(11).standard_normal(rate * 4) * 2000).astype(np.int16)
    rig = AlsaRig(tmp_path / "rig")
    rig.add_duplex("dup", rate, source=mic)
    rig.start()
    aec = Aec3EchoCanceller.create(idle_bypass_ms=200)
    ears = Ears(wake=NoWake(), is_speech=lambda frame: True, echo=aec, config=EarsConfig())
    ears.apply(decide(AgentState.LISTENING, BargeInRules(), uplink=Uplink(0, 1)))
    pieces: list[UplinkAudio] = []
    lock = threading.Lock()

    def on_events(events: list[object]) -> None:
        with lock:
            pieces.extend(e for e in events if isinstance(e, UplinkAudio))

    pipe = CapturePipeline(ears, on_events)
    engine = AudioEngine(
        input_device="dup",
        output_device="dup",
        duplex=True,
        duplex_rate_hz=rate,
        output_source=Bursts(),
        on_block=pipe.on_block,
    )
    try:
        pipe.start()
        assert engine.start() is EngineState.RUNNING
        deadline = time.monotonic() + 60
        while pipe.capture_pos < mic.size - rate // 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        engine.stop()
        pipe.stop()
        rig.stop()
    switched_on = aec.processed_blocks
    assert switched_on > 0 and aec.bypassed_blocks > 0
    with lock:
        got = list(pieces)
    covered = 0
    for piece in got:
        pcm = np.frombuffer(piece.pcm, dtype="<i2")
        start = piece.start_sample
        end = min(start + pcm.size, mic.size)
        if end <= start:
            continue
        assert np.array_equal(pcm[: end - start], mic[start:end]), f"at sample {start}"
        covered += end - start
    assert covered >= mic.size - rate  # the gate was open all along: nearly all went up


@pytest.mark.parametrize("room_db", [-6.0, -12.0, -20.0])
def test_the_wake_cue_heard_raw_never_opens_the_gate_on_its_own(room_db: float) -> None:
    """While AEC3 is unsettled the user's turn is heard raw, so the wake cue's own echo
    reaches the VAD: it must not start a turn by itself (the gate asks for more speech
    during playback than a cue lasts). Real webrtcvad, real AEC3, the real cue through a
    simulated room."""
    from edge_agent.audio.vad import WebRtcVad
    from edge_agent.core.cues import Cue, render_cue
    from edge_agent.core.events import SpeechStarted
    from edge_agent_devkit.rig import speech

    rng = np.random.default_rng(4)
    n = RATE * 3
    ref = np.zeros(n, dtype=np.int16)
    cue = render_cue(Cue.WAKE, sample_rate_hz=RATE, volume=0.4)  # cue_volume_percent = 40
    at = RATE + RATE // 2
    ref[at : at + cue.size] = cue
    room = speech.Room(direct_gain_db=room_db, rt60_s=0.3)
    mic = speech.to_int16(speech.add_noise(speech.simulate_echo(ref, room, rng), -60, rng))
    ears = Ears(
        wake=NoWake(),
        is_speech=WebRtcVad(2).is_speech,
        echo=Aec3EchoCanceller.create(),
        config=EarsConfig(),
    )
    events = []
    for i in range(0, n, BLOCK):
        if i == at - 2 * BLOCK:  # the wake word was just heard: the user's turn opens
            ears.apply(decide(AgentState.LISTENING, BargeInRules(), uplink=Uplink(None, 1)))
        events += ears.process(mic[i : i + BLOCK], ref[i : i + BLOCK], i)
    assert [e for e in events if isinstance(e, SpeechStarted)] == []
    assert [e for e in events if isinstance(e, UplinkAudio)] == []

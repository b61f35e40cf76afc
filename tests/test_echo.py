"""Echo cancellation: adapter logic with a fake engine, then closed-loop tests with AEC3.

Closed loop: the reply is synthesised at 24 kHz (the Live API's rate), resampled to
16 kHz as the reference (in the real engine: the device-rate block resampled), and
the mic hears it through a simulated room (output latency, direct path 5-30 ms at
-6 to -20 dB, exponential reverb with RT60 150-300 ms, noise), plus the user.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pytest

from edge_agent.audio.ears import Ears, EarsConfig
from edge_agent.audio.echo import (
    REF_SILENCE_PEAK,
    Aec3EchoCanceller,
    NoiseFill,
    PlaybackGuard,
    block_energy_db,
    reference_active,
)
from edge_agent.audio.vad import WebRtcVad
from edge_agent.audio.wakeword import WakeWordDetector, load_openwakeword_model
from edge_agent.core.events import BargeInDetected, SpeechStarted, WakeWordDetected
from edge_agent.core.policy import (
    AgentState,
    BargeInRules,
    ConversationPolicy,
    Listen,
    Uplink,
    decide,
)
from edge_agent_devkit.rig import speech
from edge_agent_devkit.rig.speech import Room

RATE = 16000
BLOCK = 160
needs_espeak = pytest.mark.skipif(not speech.espeak_available(), reason="espeak-ng missing")


def ms(n: float) -> int:
    return round(n * RATE / 1000)


# -- adapter logic with a fake engine -------------------------------------------------


class FakeEngine:
    """Records calls; 'cancels' by returning mic // 2."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        self.calls.append((near.copy(), far.copy()))
        return (near // 2).astype(np.int16)


def test_reference_activity_threshold() -> None:
    assert not reference_active(None)
    assert not reference_active(np.zeros(160, dtype=np.int16))
    assert not reference_active(np.full(160, REF_SILENCE_PEAK, dtype=np.int16))
    assert reference_active(np.full(160, -REF_SILENCE_PEAK - 1, dtype=np.int16))


def test_warm_up_then_idle_bypass_then_instant_resume() -> None:
    engine = FakeEngine()
    aec = Aec3EchoCanceller(engine, idle_bypass_ms=1000)
    mic = np.full(BLOCK, 100, dtype=np.int16)
    silent = np.zeros(BLOCK, dtype=np.int16)
    loud = np.full(BLOCK, 5000, dtype=np.int16)
    # The first second runs through the engine even though nothing plays (AEC3 warm-up).
    for _ in range(99):
        assert np.array_equal(aec.process(mic, silent).cleaned, mic // 2)
    assert not aec.bypassed
    out = aec.process(mic, None).cleaned  # 100th block: bypass reached
    assert aec.bypassed
    assert out is mic
    for _ in range(50):
        assert aec.process(mic, silent).cleaned is mic
    assert len(engine.calls) == 99
    # Playback starts: cancelled in that very block, with the real reference, and the
    # engine gets nothing but that block (see the alignment tests for the positions).
    assert np.array_equal(aec.process(mic, loud).cleaned, mic // 2)
    assert len(engine.calls) == 100
    assert np.array_equal(engine.calls[-1][1], loud)
    # ... and for the idle time after it (echo tail), then bypassed again.
    for _ in range(99):
        aec.process(mic, silent)
    assert not aec.bypassed
    aec.process(mic, silent)
    assert aec.bypassed
    assert aec.processed_blocks == 99 + 1 + 99
    assert aec.bypassed_blocks == 1 + 50 + 1


def test_block_sizes_and_bad_reference(caplog: pytest.LogCaptureFixture) -> None:
    engine = FakeEngine()
    aec = Aec3EchoCanceller(engine)
    loud = np.full(320, 5000, dtype=np.int16)
    mic = (np.arange(320) % 100).astype(np.int16)
    out = aec.process(mic, loud).cleaned  # 20 ms block -> two 10 ms engine calls
    assert len(engine.calls) == 2
    assert np.array_equal(out, mic // 2)
    with caplog.at_level(logging.WARNING):
        odd = np.ones(100, dtype=np.int16)
        assert aec.process(odd, np.full(100, 5000, dtype=np.int16)).cleaned is odd  # not 10 ms
        aec.process(mic, np.full(10, 5000, dtype=np.int16))  # wrong ref length -> silence
        aec.process(odd, np.full(100, 5000, dtype=np.int16))
    assert np.array_equal(engine.calls[-1][1], np.zeros(BLOCK, dtype=np.int16))
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_playback_guard_covers_playback_plus_tail() -> None:
    guard = PlaybackGuard(tail_ms=500)
    ref = speech.concat(
        speech.silence(0.1), np.full(ms(200), 5000, dtype=np.int16), speech.silence(1.0)
    )
    flags = [guard.update(ref[i : i + BLOCK], i, BLOCK) for i in range(0, ref.size, BLOCK)]
    first, last_loud = ms(100) // BLOCK, ms(300) // BLOCK - 1
    tail_blocks = ms(500) // BLOCK
    assert flags == [first <= k <= last_loud + tail_blocks for k in range(len(flags))]
    assert guard.guarded_samples == ms(200 + 500)


def test_noise_fill_replaces_gated_blocks_with_learned_room_noise() -> None:
    rng = np.random.default_rng(3)
    fill = NoiseFill()
    room = [speech.to_int16(rng.standard_normal(BLOCK) * 60) for _ in range(300)]
    silent_ref = False
    # Learn: 3 s of room noise while nothing plays.
    for block in room:
        assert fill.process(block, block, silent_ref) is block
    assert fill.floor_db is not None
    assert fill.floor_db == pytest.approx(min(block_energy_db(b) for b in room[50:]), abs=0.01)
    # During playback AEC3 gates the noise to (near) silence: the VAD gets room noise.
    gated = np.zeros(BLOCK, dtype=np.int16)
    out = fill.process(room[0], gated, True)
    assert any(np.array_equal(out, b) for b in room)
    # Audible blocks (the user talking) pass untouched; so do blocks at the floor.
    voice = speech.to_int16(rng.standard_normal(BLOCK) * 3000)
    assert fill.process(room[0], voice, True) is voice
    assert fill.process(room[0], room[5], True) is room[5]
    assert fill.filled_blocks == 1
    # Nothing is learned during playback or its 500 ms tail.
    floor = fill.floor_db
    for _ in range(49):
        fill.process(gated, gated, False)
    assert fill.floor_db == floor


def test_noise_fill_passes_audio_until_it_has_learned() -> None:
    fill = NoiseFill()
    gated = np.zeros(BLOCK, dtype=np.int16)
    assert fill.process(gated, gated, True) is gated
    assert fill.filled_blocks == 0


# -- the simulation helpers -----------------------------------------------------------


def test_room_impulse_response_matches_its_spec() -> None:
    room = Room(latency_ms=40, direct_delay_ms=10, direct_gain_db=-12, rt60_s=0.25, drr_db=3)
    ir = speech.room_impulse_response(room, np.random.default_rng(0))
    start = ms(50)
    assert np.all(ir[:start] == 0)
    assert ir[start] == pytest.approx(10 ** (-12 / 20))
    tail = ir[start + 1 :]
    assert tail.size == ms(250)
    assert 10 * np.log10(ir[start] ** 2 / np.sum(tail**2)) == pytest.approx(3.0)
    # The envelope decays ~60 dB over RT60: compare the first and last 20 ms.
    head_db = 10 * np.log10(np.mean(tail[ms(5) : ms(25)] ** 2))
    end_db = 10 * np.log10(np.mean(tail[-ms(20) :] ** 2))
    assert 45 < head_db - end_db < 70


@needs_espeak
def test_synthesis_is_cached_and_resampled(tmp_path) -> None:
    a16 = speech.synthesize("hello there", voice="en-us", speed_wpm=170, cache_dir=tmp_path)
    assert a16.dtype == np.int16
    assert len(list(tmp_path.glob("*.npy"))) == 1
    again = speech.synthesize("hello there", voice="en-us", speed_wpm=170, cache_dir=tmp_path)
    assert np.array_equal(a16, again)
    a24 = speech.synthesize(
        "hello there", voice="en-us", speed_wpm=170, sample_rate=24000, cache_dir=tmp_path
    )
    assert abs(a24.size / a16.size - 1.5) < 0.01
    first, end = speech.active_bounds(a16)
    assert 0 <= first < end <= a16.size
    assert len(list(tmp_path.glob("*.npy"))) == 2


# -- closed loop with the real AEC3 ---------------------------------------------------

ROOMS = [
    Room(latency_ms=30, direct_delay_ms=5, direct_gain_db=-6, rt60_s=0.15, noise_dbfs=-65),
    Room(latency_ms=60, direct_delay_ms=15, direct_gain_db=-12, rt60_s=0.22, noise_dbfs=-60),
    Room(latency_ms=100, direct_delay_ms=30, direct_gain_db=-20, rt60_s=0.30, noise_dbfs=-55),
]
# Replies in which the device says its own wake word (the raw echo of both wakes it).
REPLIES = [
    ("Hey jarvis, that is my name. Ask me anything.", "en-gb-scotland", 150),
    ("You can wake me by saying, hey jarvis. Then ask your question.", "en-us", 150),
]
USERS = [
    ("stop please, what is the time", "en-us+m7", 160),
    ("wait, I have another question", "en+f3", 170),
    ("no, that is wrong", "en-gb", 150),
]
REPLY_DBFS = -18.0  # reply level in the digital reference
USER_DBFS = -20.0  # user at the mic; the echo is 6-20 dB under the reply


@dataclass(frozen=True)
class Scene:
    played: np.ndarray  # the 16 kHz reference, aligned with the mic
    mic: np.ndarray
    echo: np.ndarray  # the echo part of the mic (float, no noise)
    reply_start: int
    reply_end: int
    user_start: int | None


def scene(
    room: Room,
    reply: tuple[str, str, int],
    *,
    user: tuple[str, str, int] | None = None,
    user_at: float = 0.5,
    seed: int = 0,
    tail_s: float = 1.5,
) -> Scene:
    text, voice, speed = reply
    at_24k = speech.synthesize(text, voice=voice, speed_wpm=speed, sample_rate=24000)
    ref = speech.to_int16(speech.scale_to_dbfs(speech.resample(at_24k, 24000, RATE), REPLY_DBFS))
    lead = speech.silence(1.5)
    played = speech.concat(lead, ref, speech.silence(tail_s))
    rng = np.random.default_rng(seed)
    echo = speech.simulate_echo(played, room, rng)
    near = np.zeros(played.size)
    user_start = None
    if user is not None:
        words = speech.trim(speech.synthesize(user[0], voice=user[1], speed_wpm=user[2]))
        user_start = lead.size + int(ref.size * user_at)
        n = min(words.size, played.size - user_start)
        near[user_start : user_start + n] = speech.scale_to_dbfs(words, USER_DBFS)[:n]
    mic = speech.to_int16(speech.add_noise(echo + near, room.noise_dbfs, rng))
    return Scene(played, mic, echo, lead.size, lead.size + ref.size, user_start)


@pytest.fixture(scope="module")
def jarvis_model():
    return load_openwakeword_model(["hey_jarvis"])


def make_ears(model, *, aec: bool, guard: bool | None = None) -> tuple[Ears, WakeWordDetector]:
    model.reset()
    wake = WakeWordDetector(model, {"hey_jarvis": 0.5})
    ears = Ears(
        wake=wake,
        is_speech=WebRtcVad(2).is_speech,
        echo=Aec3EchoCanceller.create() if aec else None,
        config=EarsConfig(),
        guard_playback=guard,
    )
    return ears, wake


def policy_at(listen: Listen, i: int, window: int) -> ConversationPolicy:
    """The policy that makes the ears do `listen` from block `i`: a reply playing, or the
    user's turn with an uplink window that reaches one 300 ms pre-roll back."""
    if listen is Listen.BARGE_IN:
        return decide(AgentState.SPEAKING, BargeInRules(wake_word=True, voice=True))
    return decide(AgentState.LISTENING, BargeInRules(), uplink=Uplink(max(0, i - ms(300)), window))


def play(ears: Ears, sc: Scene, listen: Listen, *, listen_after: bool = False) -> list:
    """Run the scene: wake word only until the reply starts, then `listen` (BARGE_IN or
    TURN); optionally the user's turn 100 ms after the reply ends (the follow-up window)."""
    events = []
    for i in range(0, sc.mic.size - BLOCK + 1, BLOCK):
        if i == sc.reply_start:
            ears.apply(policy_at(listen, i, 1))
        if listen_after and i == sc.reply_end + ms(100):
            ears.apply(policy_at(Listen.TURN, i, 2))
        for ev in ears.process(sc.mic[i : i + BLOCK], sc.played[i : i + BLOCK], i):
            events.append((i + BLOCK, ev))
    return events


def of(events, kind):
    return [(t, e) for t, e in events if isinstance(e, kind)]


@needs_espeak
@pytest.mark.parametrize("room", ROOMS, ids=lambda r: f"{r.direct_gain_db:+.0f}dB")
def test_aec3_removes_at_least_25_db_of_echo(room: Room) -> None:
    """ERLE on far-end-only audio (noise at -85 dBFS so it does not cap the figure)."""
    quiet_room = Room(
        room.latency_ms, room.direct_delay_ms, room.direct_gain_db, room.rt60_s, room.drr_db, -85
    )
    sc = scene(quiet_room, REPLIES[0])
    aec = Aec3EchoCanceller.create()
    out = np.concatenate(
        [
            aec.process(sc.mic[i : i + BLOCK], sc.played[i : i + BLOCK]).cleaned
            for i in range(0, sc.mic.size - BLOCK + 1, BLOCK)
        ]
    )
    n = out.size
    # Far-end-only stretches: 10 ms blocks where the echo is within 40 dB of its peak.
    echo_db = np.array(
        [block_energy_db(speech.to_int16(sc.echo[i : i + BLOCK])) for i in range(0, n, BLOCK)]
    )
    active = np.repeat(echo_db > echo_db.max() - 40, BLOCK)[:n]
    erle = speech.erle_db(sc.mic[:n], out, active)
    assert erle >= 25.0, f"ERLE {erle:.1f} dB"


@needs_espeak
@pytest.mark.timeout(240)
@pytest.mark.parametrize("reply", REPLIES, ids=["at-start", "mid-reply"])
def test_with_aec_the_reply_saying_hey_jarvis_triggers_nothing(jarvis_model, reply) -> None:
    for k, room in enumerate(ROOMS):
        sc = scene(room, reply, seed=k)
        for listen in (Listen.BARGE_IN, Listen.TURN):
            ears, wake = make_ears(jarvis_model, aec=True)
            events = play(ears, sc, listen)
            case = f"room {room.direct_gain_db} dB, {listen}"
            assert of(events, WakeWordDetected) == [], case
            assert of(events, BargeInDetected) == [], case
            assert of(events, SpeechStarted) == [], case
            assert wake.peak_scores["hey_jarvis"] < 0.5, case


@needs_espeak
@pytest.mark.timeout(240)
def test_without_aec_the_echo_wakes_the_device_and_fools_the_vad(jarvis_model) -> None:
    """Why AEC is needed: with neither AEC nor the playback guard, the device hears itself."""
    for k, room in enumerate(ROOMS):
        sc = scene(room, REPLIES[0], seed=k)
        ears, _ = make_ears(jarvis_model, aec=False, guard=False)
        events = play(ears, sc, Listen.BARGE_IN)
        wakes = of(events, WakeWordDetected)
        barges = of(events, BargeInDetected)
        assert wakes, f"room {room.direct_gain_db} dB: the echo did not wake the raw pipeline"
        assert barges, f"room {room.direct_gain_db} dB: the echo did not trip the raw VAD"
        assert all(sc.reply_start <= t <= sc.reply_end + ms(700) for t, _ in wakes + barges)
        ears, _ = make_ears(jarvis_model, aec=False, guard=False)
        assert of(play(ears, sc, Listen.TURN), SpeechStarted), "raw VAD gate stayed shut"


@needs_espeak
@pytest.mark.timeout(240)
def test_without_aec_the_guard_suppresses_echo_and_voice_barge_in(jarvis_model) -> None:
    """The no-AEC policy: nothing fires on the echo, and neither does the user talking
    over the reply (voice barge-in needs AEC; the button still works)."""
    for k, room in enumerate(ROOMS):
        for user in (None, USERS[0]):
            sc = scene(room, REPLIES[0], user=user, seed=k)
            ears, _ = make_ears(jarvis_model, aec=False)  # guard on by default
            events = play(ears, sc, Listen.BARGE_IN)
            case = f"room {room.direct_gain_db} dB, user {user is not None}"
            assert of(events, WakeWordDetected) == [], case
            assert of(events, BargeInDetected) == [], case
            assert ears.stats.guarded_samples >= sc.reply_end - sc.reply_start, case


@needs_espeak
@pytest.mark.timeout(240)
def test_user_talking_over_the_reply_is_a_barge_in_within_700_ms(jarvis_model) -> None:
    latencies = []
    for k, room in enumerate(ROOMS):
        for j, user in enumerate(USERS):
            sc = scene(room, REPLIES[1], user=user, user_at=0.3 + 0.15 * j, seed=10 * k + j)
            ears, _ = make_ears(jarvis_model, aec=True)
            barges = of(play(ears, sc, Listen.BARGE_IN), BargeInDetected)
            case = f"room {room.direct_gain_db} dB, user {user[0]!r}"
            assert len(barges) == 1, case
            detected_at, ev = barges[0]
            assert sc.user_start is not None
            latency_ms = (ev.detected_sample - sc.user_start) * 1000 / RATE
            assert 0 < latency_ms <= 700, f"{case}: {latency_ms:.0f} ms"
            assert detected_at == ev.detected_sample or detected_at - ev.detected_sample < ms(30)
            # The uplink would start at (or a little before) the user's first word.
            assert sc.user_start - ms(450) <= ev.sample <= sc.user_start + ms(300), case
            latencies.append(latency_ms)
    print(f"barge-in latency ms: {sorted(round(x) for x in latencies)}")


@needs_espeak
@pytest.mark.timeout(240)
@pytest.mark.parametrize("noise_dbfs", [-65.0, -50.0])
def test_listening_after_the_reply_does_not_open_on_room_noise(jarvis_model, noise_dbfs) -> None:
    """AEC3 gates the room noise during echo; when the reply ends the noise returns.
    Without the noise fill webrtcvad called that returning noise speech."""
    for k, base in enumerate(ROOMS):
        room = Room(
            base.latency_ms,
            base.direct_delay_ms,
            base.direct_gain_db,
            base.rt60_s,
            base.drr_db,
            noise_dbfs,
        )
        sc = scene(room, REPLIES[1], seed=k, tail_s=3.0)
        ears, _ = make_ears(jarvis_model, aec=True)
        events = play(ears, sc, Listen.BARGE_IN, listen_after=True)
        assert of(events, SpeechStarted) == [], f"room {room.direct_gain_db} dB"
        assert of(events, BargeInDetected) == [], f"room {room.direct_gain_db} dB"

"""What the sound card callback saves while the device idles, and that it changes nothing.

* A quiet output source (``output_quiet``) is not pulled, yet every device sample and
  counter is what pulling it would have given, and a reply that starts is pulled at once.
* Idle callbacks that only hold the mic input back take a short path; what comes out of
  the session (device samples, counters, the blocks and their positions) is what the long
  path gives, and a reply, a cue or a change of listening ends the short path at once.
* PortAudio's callback thread keeps its Python thread state between callbacks (its
  thread-local values survive) and gives it back when the stream stops.
"""

from __future__ import annotations

import threading

import numpy as np

from edge_agent.app.playback import ReplyPlayback
from edge_agent.audio.engine import AudioEngine, EngineState
from edge_agent.audio.resample import StreamResampler
from edge_agent.audio.streams import Session, StreamCounters, StreamSetup
from edge_agent.config import Config
from edge_agent_devkit.rig.alsa_rig import AlsaRig
from edge_agent_devkit.rig.waiting import wait_until as wait_for


class ScriptedSource:
    """24 kHz output: silence until `start_at` pulls have been asked for, then a clip."""

    def __init__(self, clip: np.ndarray, start_after: int) -> None:
        self.clip, self.start_after = clip, start_after
        self.asked = 0  # samples the engine accounted for (pulled or skipped as quiet)
        self.pulls = 0
        self.pos = 0

    def quiet(self) -> bool:
        quiet = self.asked < self.start_after
        if quiet:
            self.asked += 240
        return quiet

    def __call__(self, n: int) -> np.ndarray:
        self.pulls += 1
        if self.asked < self.start_after:
            self.asked += n
            return np.zeros(n, dtype=np.int16)
        self.asked += n
        out = np.zeros(n, dtype=np.int16)
        chunk = self.clip[self.pos : self.pos + n]
        out[: len(chunk)] = chunk
        self.pos += len(chunk)
        return out


def _session(source: ScriptedSource, quiet: bool) -> Session:
    setup = StreamSetup(
        capture_rates_hz=(48000,),
        playback_rates_hz=(24000,),
        duplex_rates_hz=(48000,),
        block_ms=10,
        output_source=source,
        on_block=None,
        counters=StreamCounters(),
        output_quiet=source.quiet if quiet else None,
    )
    s = Session(pa=None, setup=setup, stop=threading.Event(), duplex=True)  # type: ignore[arg-type]
    s.pins.enabled = False  # driven from this thread, not PortAudio's
    s.in_rate = s.out_rate = 48000
    s.mic_rs = StreamResampler(48000, 16000)
    s.ref_rs = StreamResampler(48000, 16000)
    s.out_rs = StreamResampler(24000, 48000)
    return s


def test_quiet_source_is_not_pulled_and_the_device_gets_the_same_samples():
    clip = (np.random.default_rng(3).standard_normal(4800) * 3000).astype(np.int16)
    plain_src, quiet_src = ScriptedSource(clip, 240 * 60), ScriptedSource(clip, 240 * 60)
    plain, quiet = _session(plain_src, quiet=False), _session(quiet_src, quiet=True)
    mic = bytes(960)
    outs: dict[str, list[bytes]] = {"plain": [], "quiet": []}
    for _ in range(120):
        for name, s in (("plain", plain), ("quiet", quiet)):
            out, _flag = s._duplex_callback(mic, 480, None, 0)
            outs[name].append(out)
    assert outs["plain"] == outs["quiet"]
    assert np.count_nonzero(np.frombuffer(b"".join(outs["quiet"]), dtype="<i2")) > 0
    # Quiet for 60 callbacks, of which all but the resampler's first 100 ms skip the pull.
    assert quiet_src.pulls <= plain_src.pulls - 45
    assert quiet_src.pos == plain_src.pos == len(clip)
    for field in ("pulled_samples_24k", "played_device_samples", "played_24k"):
        assert getattr(quiet.setup.counters, field) == getattr(plain.setup.counters, field)


class GridConsumer:
    """Takes blocks as the capture pipeline does while the ears wait for the wake word:
    it answers with itself, and its ``hold_grid`` (80 ms frames) lets idle input wait."""

    def __init__(self, hold: bool) -> None:
        self.hold_grid: tuple[int, int] | None = (128, 1280) if hold else None
        self.blocks: list[tuple[int, bytes, bytes | None]] = []
        self.arrived_at: list[int] = []  # the callback each block came out of
        self.callback = 0

    def __call__(self, mic: np.ndarray, ref: np.ndarray | None, pos: int) -> GridConsumer:
        self.blocks.append((pos, mic.tobytes(), None if ref is None else ref.tobytes()))
        self.arrived_at.append(self.callback)
        return self


def _held_session(source: ScriptedSource, consumer: GridConsumer) -> Session:
    s = _session(source, quiet=True)
    s.setup = StreamSetup(**{**s.setup.__dict__, "on_block": consumer})
    return s


def _drive(s: Session, consumer: GridConsumer, mic48: np.ndarray, until: int) -> list[bytes]:
    outs = []
    for k in range(until):
        consumer.callback = k
        out, _flag = s._duplex_callback(mic48[480 * k : 480 * (k + 1)].tobytes(), 480, None, 0)
        outs.append(out)
    return outs


def test_idle_short_path_gives_what_the_long_path_gives():
    """A consumer with a hold grid against one without (every block delivered at once, no
    holding, no short path): the same device output, counters and blocks, the reply that
    starts mid-batch included; most idle callbacks took the short path."""
    mic48 = (np.random.default_rng(5).standard_normal(48000 * 3) * 2000).astype(np.int16)
    clip = (np.random.default_rng(6).standard_normal(7200) * 3000).astype(np.int16)
    start = 240 * 151  # the reply starts in the middle of an 80 ms batch
    runs = {}
    for hold in (False, True):
        source, consumer = ScriptedSource(clip, start), GridConsumer(hold)
        s = _held_session(source, consumer)
        outs = _drive(s, consumer, mic48, 290)
        runs[hold] = (outs, consumer, s.setup.counters, source, s)
    (outs0, plain, c0, src0, s0), (outs1, held, c1, src1, s1) = runs[False], runs[True]
    assert outs1 == outs0
    assert src1.pos == src0.pos == len(clip)
    for name in ("pulled_samples_24k", "played_device_samples", "played_24k"):
        assert getattr(c1, name) == getattr(c0, name), name
    assert s1.out_rs is not None and s0.out_rs is not None
    assert (s1.out_rs.in_samples, s1.out_rs.out_samples) == (
        s0.out_rs.in_samples,
        s0.out_rs.out_samples,
    )
    n = len(held.blocks)
    assert n >= len(plain.blocks) - 8  # at most one batch still held at the end
    assert held.blocks == plain.blocks[:n]
    assert c0.short_path_callbacks == 0
    # Idle for 150 callbacks; after the resampler's first 100 ms, 7 of every 8 go short.
    assert c1.short_path_callbacks >= 115
    # While the reply plays nothing is held: each block with playback in its reference
    # comes out of the same callback as without holding.
    playing = [
        k for k, (_p, _m, ref) in enumerate(held.blocks) if np.frombuffer(ref, np.int16).any()
    ]
    assert len(playing) > 25
    assert all(held.arrived_at[k] == plain.arrived_at[k] for k in playing)


def test_idle_short_path_ends_when_the_grid_goes():
    """The ears stop waiting for the wake word alone (a button press, say): the input held
    so far comes out with the very next callback, not at the end of the batch."""
    mic48 = (np.random.default_rng(7).standard_normal(48000 * 2) * 2000).astype(np.int16)
    source, consumer = ScriptedSource(np.zeros(0, dtype=np.int16), 10**9), GridConsumer(True)
    s = _held_session(source, consumer)
    _drive(s, consumer, mic48, 40)
    assert s.setup.counters.short_path_callbacks > 0
    while not s.fast_held:  # into a batch, past its first (long-path) callback
        consumer.callback += 1
        k = consumer.callback
        s._duplex_callback(mic48[480 * k : 480 * (k + 1)].tobytes(), 480, None, 0)
    delivered = len(consumer.blocks)
    consumer.hold_grid = None
    consumer.callback += 1
    k = consumer.callback
    s._duplex_callback(mic48[480 * k : 480 * (k + 1)].tobytes(), 480, None, 0)
    assert len(consumer.blocks) > delivered
    assert consumer.arrived_at[-1] == k
    assert not s.held and not s.fast_held and s.batch_left == 0
    # Every sample up to this callback has come out, as the long path would give it.
    rs = StreamResampler(48000, 16000)
    expected = rs.process(mic48[: 480 * (k + 1)])
    got = np.frombuffer(b"".join(m for _p, m, _r in consumer.blocks), dtype=np.int16)
    assert got.size == expected.size // 160 * 160
    assert np.array_equal(got, expected[: got.size])


def test_reply_playback_is_quiet_only_with_nothing_to_play_or_report():
    playback = ReplyPlayback(Config(), on_drained=lambda: None)
    assert playback.output_quiet()
    playback.push(bytes(2 * 2400))  # 100 ms of reply
    playback.turn_completed()
    assert not playback.output_quiet()
    for _ in range(40):  # past the prefill, the reply and its fade-out
        playback.output_source(240)
    assert playback.jitter.is_idle
    playback._drained()  # what the event loop does with the drain the pull reported
    assert playback.output_quiet()
    playback.cues.play("wake")
    assert not playback.output_quiet()


def test_callback_thread_keeps_its_python_state_and_gives_it_back(tmp_path):
    rig = AlsaRig(tmp_path / "rig")
    rig.add_duplex("dup", 48000, source=np.zeros(48000 * 5, dtype=np.int16))
    rig.start()
    local = threading.local()
    seen: list[int] = []

    def on_block(mic: np.ndarray, ref: np.ndarray | None, pos: int) -> None:
        local.blocks = getattr(local, "blocks", 0) + 1
        seen.append(local.blocks)

    engine = AudioEngine(
        input_device="dup",
        output_device="dup",
        duplex=True,
        duplex_rate_hz=48000,
        output_source=lambda n: np.zeros(n, dtype=np.int16),
        on_block=on_block,
    )
    try:
        assert engine.start() is EngineState.RUNNING
        assert wait_for(lambda: len(seen) >= 50)
        session = engine._supervisor.session
        assert session is not None and session.pins.pinned == 1
    finally:
        engine.stop()
        rig.stop()
    # A thread state made afresh for every callback would forget the count each time.
    assert max(seen) >= 50
    assert session.pins.pinned == 0

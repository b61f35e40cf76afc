"""What the sound card callback saves while the device idles, and that it changes nothing.

* A quiet output source (``output_quiet``) is not pulled, yet every device sample and
  counter is what pulling it would have given, and a reply that starts is pulled at once.
* PortAudio's callback thread keeps its Python thread state between callbacks (its
  thread-local values survive) and gives it back when the stream stops.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from edge_agent.app.playback import ReplyPlayback
from edge_agent.audio.engine import AudioEngine, EngineState
from edge_agent.audio.resample import StreamResampler
from edge_agent.audio.streams import Session, StreamCounters, StreamSetup
from edge_agent.config import Config
from edge_agent_devkit.rig.alsa_rig import AlsaRig

WAIT_S = 10.0


def wait_for(pred: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


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

"""Audio-side benchmarks: in-process, real libraries, no daemon.

What each figure counts (all measured in this run; a failed step gives None + an error):

* ``idle_cpu_percent_of_core`` / ``idle_cpu_ratio_vs_bare_openwakeword``: the always-on
  path as the daemon runs it while IDLE. An ALSA rig duplex device at the configured
  ``audio.duplex_rate_hz`` (48 kHz by default; echo cancellation on means one full-duplex
  stream) is fed espeak-ng speech, silence and -60 dBFS noise in real time; the real
  ``AudioEngine`` (PyAudio) resamples the mic to 16 kHz, renders the (silent) output from a
  real ``JitterBuffer`` and ``CueMixer`` (as the daemon's output source does) and hands
  10 ms blocks to the daemon's own ``CapturePipeline`` (bounded drop-oldest queue, ears
  worker thread) running ``Ears`` (built as
  ``Ears.create`` builds it from the default config: AEC3 with idle bypass, openWakeWord,
  webrtcvad). Counted over a window of whole blocks (60 s; quick: 8 s) after a 1.5 s
  lead-in: the PortAudio callback thread (``time.thread_time()`` read inside the block
  callback, exact), the ears worker thread (``thread_time()`` in the worker, read as each
  block reaches the listener, exact, including its queue waits) and every other thread of
  the process except the bench's main thread and the rig's FIFO feeder/recorder threads
  (which stand in for the sound card), read from ``/proc/self/task/*/stat`` (10 ms ticks):
  in practice the engine's supervisor thread.
  The baseline is a bare openWakeWord predict loop (its own model instance, 80 ms frames,
  openwakeword's own streaming front end: ``load_openwakeword_model(lean_streaming=False)``,
  the features and scores of ``openwakeword.Model.predict`` without the package ``__init__``;
  the daemon runs the lean front end, same scores, see ``edge_agent.audio.oww_tflite``)
  running in another thread on exactly the same 16 kHz audio in the same window,
  handed to it as the pipeline hands it to ``Ears.process`` (while idle, up to 80 ms at a
  time: see ``edge_agent.audio.capture``), counted with ``thread_time()`` around each
  ``predict`` call (openWakeWord's TFLite interpreters run single-threaded; the loop's own
  queue and framing are not counted).
  The ALSA ``file`` plugin does a read()/write() per period where a real card uses DMA, so
  the capture share is, if anything, overstated.
* ``idle_cpu_ratio_vs_lean_wake_model``: the same window against the same wake model with
  the daemon's lean front end (same scores), predicted in the same baseline thread right
  after the stock one: what everything but the wake model costs.
* ``wake_detection_delay_ms``: median over espeak-ng voices of (end of the 10 ms block in
  whose ``Ears.process`` call ``WakeWordDetected`` came out) - (true end of the wake
  phrase, ``speech.wake_phrase_clip``), in capture samples. Algorithmic delay only: the
  device's input buffering comes on top (noted).
* ``echo_self_triggers`` / ``baseline_echo_self_triggers_aec_off``: a scripted 5-minute run
  (quick: 25 s) of replies, most saying "hey jarvis", played into simulated rooms (4 rooms,
  75 s each; `speech.room_impulse_response` + noise) and through ``Ears`` with the daemon's
  mode changes (IDLE, PLAYING while the reply plays, LISTENING for the follow-up window,
  IDLE). Every ``WakeWordDetected``, ``BargeInDetected`` and ``SpeechStarted`` is a self-
  trigger (no user speaks). The baseline is the same audio with echo cancellation OFF and
  no playback guard. Events are counted; nothing reacts to them.
* ``echo_erle_db``: median over the rooms of the echo reduction of AEC3 (the adapter Ears
  uses) on the same played audio with the noise at -85 dBFS, over the far-end-only blocks
  (echo within 40 dB of its peak), as tests/test_echo.py measures it.
* ``voice_barge_in_ms``: closed loop through a real ``JitterBuffer`` (config defaults): the
  reply is pushed, pulled in 10 ms device blocks, its 16 kHz version is the echo reference
  and (through a room) the echo; the user speaks over it. On ``BargeInDetected`` the
  buffer is cleared before the next block is pulled; the figure is (last non-zero sample
  pulled + one 10 ms device block for the callback already in flight) - (user speech
  onset). Median over 12 cases (quick: 2).
* ``underruns_per_minute`` / ``baseline_underruns_per_minute_no_jitter_buffer``: a real
  ``JitterBuffer`` on a simulated clock: reply turns of 40 ms chunks arriving at real-time
  pace with +-40 ms uniform jitter (in order, as over TCP), turn-complete after the last
  chunk, pulled every 10 ms; underruns (``JitterBuffer.underruns``) per minute of reply
  audio, with the default prefill and with prefill 0 (play as it arrives).
"""

from __future__ import annotations

import logging
import os
import queue
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent_devkit.bench.report import PartReport, all_keys

logger = logging.getLogger(__name__)

RATE = 16_000
BLOCK = 160  # 10 ms at 16 kHz: the engine's and AEC3's block
OUT_RATE = 24_000
OUT_BLOCK = 240  # 10 ms at 24 kHz: one device pull from the jitter buffer
WAKE_MODEL = "hey_jarvis"

# Every audio key except the jitter simulation needs espeak-ng speech.
SPEECH_KEYS = (
    "idle_cpu_ratio_vs_bare_openwakeword",
    "idle_cpu_percent_of_core",
    "wake_detection_delay_ms",
    "echo_erle_db",
    "echo_self_triggers",
    "baseline_echo_self_triggers_aec_off",
    "voice_barge_in_ms",
)

# What the mic hears while the device idles: (text, voice, wpm) or a pause in seconds.
IDLE_SCRIPT: tuple[tuple[str, str, int] | float, ...] = (
    2.0,
    ("hey jarvis, what time is it", "en-us", 160),
    4.0,
    ("turn on the kitchen lights", "en-gb", 165),
    6.0,
    ("I think it will rain later today", "en+f3", 170),
    3.0,
    ("hey jarvis, play some jazz music", "en-us+m7", 150),
    8.0,
    ("how far is the station from here", "en+m3", 160),
    5.0,
    ("good morning everyone, the service was great", "en-gb-scotland", 160),
    10.0,
    ("remind me to call mom tomorrow", "en-us+f2", 175),
    7.0,
)
IDLE_NOISE_DBFS = -60.0
IDLE_LEAD_S = 1.5  # stream start + AEC3 warm-up (it processes its first second): not counted
IDLE_16K_WINDOW_S = 20.0  # the second, shorter pass at 16 kHz (a note)

# Replies the device speaks; most say its own wake word.
ECHO_REPLIES: tuple[tuple[str, str, int], ...] = (
    ("Hey jarvis, that is my name. Ask me anything.", "en-gb-scotland", 150),
    ("You can wake me by saying, hey jarvis. Then ask your question.", "en-us", 150),
    ("It is twenty past three. If you need anything else, just say hey jarvis.", "en+f3", 165),
    ("I set a timer for ten minutes. Say hey jarvis, stop, to cancel it.", "en-us+m7", 160),
    ("Hey jarvis is the phrase I listen for. Hey jarvis. Hey jarvis.", "en-gb", 170),
    ("Tomorrow will be sunny, with a high of twenty degrees.", "en+m3", 160),
    ("My name is Jarvis. People say hey jarvis to get my attention.", "en-us+f2", 150),
    ("Playing some jazz now. Hey jarvis, next song, skips a track.", "en-029", 160),
)
BARGE_REPLIES: tuple[tuple[str, str, int], ...] = (
    ("You can wake me by saying, hey jarvis. Then ask your question.", "en-us", 150),
    (
        "Tomorrow will be sunny in the morning, with clouds after lunch "
        "and a chance of rain in the evening.",
        "en-gb",
        160,
    ),
)
BARGE_USERS: tuple[tuple[str, str, int], ...] = (
    ("stop please, what is the time", "en-us+m7", 160),
    ("wait, I have another question", "en+f3", 170),
    ("no, that is wrong", "en-gb", 150),
)
REPLY_DBFS = -18.0  # reply level in the digital reference
USER_DBFS = -20.0  # the user at the mic; the echo sits 6-20 dB under the reply
ERLE_NOISE_DBFS = -85.0  # so room noise does not cap the ERLE figure
ECHO_LEAD_S = 1.5
FOLLOW_UP_S = 2.5  # LISTENING after each reply (the daemon's follow-up window, shortened)
IDLE_GAP_S = 1.0
ONSET_TALK_MS = 700  # the reply keeps talking this long after the user's onset

JITTER_CHUNK_MS = 40
JITTER_MS = 40


def _rooms() -> list[Any]:
    from edge_agent_devkit.rig.speech import Room

    # Direct path 5-30 ms at -6..-20 dB, RT60 150-300 ms, output latency 30-150 ms.
    return [
        Room(latency_ms=30, direct_delay_ms=5, direct_gain_db=-6, rt60_s=0.15, noise_dbfs=-65),
        Room(latency_ms=60, direct_delay_ms=15, direct_gain_db=-12, rt60_s=0.22, noise_dbfs=-60),
        Room(latency_ms=100, direct_delay_ms=30, direct_gain_db=-20, rt60_s=0.30, noise_dbfs=-55),
        Room(latency_ms=150, direct_delay_ms=10, direct_gain_db=-10, rt60_s=0.25, noise_dbfs=-60),
    ]


# --------------------------------------------------------------------------- entry point


def run(quick: bool = False) -> dict[str, Any]:
    """Measure the audio side (see the module docstring); quick=True for a smoke run."""
    from edge_agent_devkit.rig import speech

    report = PartReport(keys=all_keys("audio"))
    report.guard(
        ("underruns_per_minute", "baseline_underruns_per_minute_no_jitter_buffer"),
        lambda: measure_underruns(report, quick),
    )
    if not speech.espeak_available():
        report.fail(SPEECH_KEYS, "espeak-ng is not installed (no test speech)")
        return report.finish()
    model_box: dict[str, Any] = {}

    def load() -> None:
        from edge_agent.audio.wakeword import load_openwakeword_model

        model_box["model"] = load_openwakeword_model([WAKE_MODEL])

    report.guard(SPEECH_KEYS, load)
    model = model_box.get("model")
    if model is None:
        return report.finish()
    report.guard(
        (
            "idle_cpu_ratio_vs_bare_openwakeword",
            "idle_cpu_percent_of_core",
            "idle_cpu_ratio_vs_lean_wake_model",
        ),
        lambda: measure_idle_cpu(report, model, quick),
    )
    report.guard(("wake_detection_delay_ms",), lambda: measure_wake_delay(report, model))
    report.guard(
        ("echo_erle_db", "echo_self_triggers", "baseline_echo_self_triggers_aec_off"),
        lambda: measure_echo(report, model, quick),
    )
    report.guard(("voice_barge_in_ms",), lambda: measure_voice_barge_in(report, model, quick))
    return report.finish()


# --------------------------------------------------------------------------- helpers


def _config() -> Any:
    from edge_agent.config import Config

    return Config()


def _make_ears(
    model: Any,
    *,
    aec: bool,
    guard: bool | None = None,
    wrap_echo: Callable[[Any], Any] | None = None,
) -> Any:
    """The production pipeline (default config) around a shared, reset wake model;
    `wrap_echo` wraps the real canceller (to observe its output)."""
    from edge_agent.audio.ears import Ears, EarsConfig
    from edge_agent.audio.echo import Aec3EchoCanceller
    from edge_agent.audio.vad import WebRtcVad
    from edge_agent.audio.wakeword import WakeWordDetector

    cfg = EarsConfig.from_settings(_config())
    model.reset()
    wake = WakeWordDetector(
        model, {WAKE_MODEL: cfg.wake_threshold}, refractory_s=cfg.wake_refractory_s
    )
    echo = (
        Aec3EchoCanceller.create(
            stream_delay_ms=cfg.aec_stream_delay_ms, idle_bypass_ms=cfg.aec_idle_bypass_ms
        )
        if aec
        else None
    )
    if echo is not None and wrap_echo is not None:
        echo = wrap_echo(echo)
    return Ears(
        wake=wake,
        is_speech=WebRtcVad(cfg.vad_mode).is_speech,
        echo=echo,
        config=cfg,
        guard_playback=guard,
    )


def _ms(samples: float, rate: int = RATE) -> float:
    return 1000.0 * samples / rate


def _pad_to_block(x: np.ndarray, block: int = BLOCK) -> np.ndarray:
    extra = -x.size % block
    return np.concatenate((x, np.zeros(extra, dtype=x.dtype))) if extra else x


def _fft_convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Full linear convolution via FFT (np.convolve is too slow for minutes of audio)."""
    n = x.size + h.size - 1
    nfft = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x.astype(np.float64), nfft) * np.fft.rfft(h, nfft), nfft)
    return y[:n]


def _reply_16k(text: str, voice: str, wpm: int, level_dbfs: float) -> np.ndarray:
    """A reply as the device plays it: synthesised at 24 kHz (the Live API rate), 16 kHz
    for the reference, trimmed, at `level_dbfs`, padded to whole blocks."""
    from edge_agent_devkit.rig import speech

    at_24k = speech.synthesize(text, voice=voice, speed_wpm=wpm, sample_rate=OUT_RATE)
    ref = speech.trim(speech.resample(at_24k, OUT_RATE, RATE))
    return _pad_to_block(speech.to_int16(speech.scale_to_dbfs(ref, level_dbfs)))


def _summary(values: Sequence[float], unit: str = "") -> str:
    vals = sorted(values)
    return ", ".join(f"{v:.0f}" if abs(v) >= 10 else f"{v:.1f}" for v in vals) + unit


# --------------------------------------------------------------------------- idle CPU


def _task_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of every thread of this process, from /proc (10 ms ticks)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    base = Path("/proc/self/task")
    for entry in base.iterdir():
        try:
            stat = (entry / "stat").read_text()
            name = (entry / "comm").read_text().strip()
        except OSError:
            continue  # the thread ended between listing and reading
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


class _Marks:
    """thread_time() of one thread at the first block at/after `start` and at/after `end`."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        self.first: tuple[int, float] | None = None
        self.last: tuple[int, float] | None = None
        self.tid: int | None = None

    def see(self, pos: int) -> None:
        if self.first is None:
            if pos >= self.start:
                self.first = (pos, time.thread_time())
                self.tid = threading.get_native_id()
        elif self.last is None and pos >= self.end:
            self.last = (pos, time.thread_time())

    @property
    def done(self) -> bool:
        return self.last is not None

    def cpu_s(self) -> float:
        assert self.first is not None and self.last is not None
        return self.last[1] - self.first[1]

    def audio_samples(self) -> int:
        assert self.first is not None and self.last is not None
        return self.last[0] - self.first[0]


class _BareLoop:
    """Bare openWakeWord predict loops in one thread of their own, fed the blocks the
    pipeline's worker was given, in 80 ms frames: each model predicts every frame in turn
    and its CPU time (``thread_time`` around its own calls) is summed inside the window.
    One thread for all of them, as the single baseline thread always was: another busy
    thread on a 2-core machine would crowd the pipeline's own threads and raise their
    figures (measured: the callback thread went from 1.1 % to 1.55 % of a core)."""

    def __init__(self, models: dict[str, Any], start: int, end: int, maxsize: int) -> None:
        self.models = models
        self.blocks: queue.Queue[tuple[np.ndarray, int]] = queue.Queue(maxsize)
        self.marks = _Marks(start, end)
        self.cpu_s = dict.fromkeys(models, 0.0)
        self.dropped = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bench-bare-oww", daemon=True)

    def put(self, mic: np.ndarray, pos: int) -> None:
        try:
            self.blocks.put_nowait((mic, pos))
        except queue.Full:
            self.dropped += 1

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5.0)

    def _run(self) -> None:
        from edge_agent.audio.wakeword import FRAME_SAMPLES

        pending = np.zeros(0, dtype=np.int16)
        while not self._stop.is_set():
            try:
                mic, pos = self.blocks.get(timeout=0.2)
            except queue.Empty:
                continue
            self.marks.see(pos)
            counting = self.marks.first is not None and self.marks.last is None
            pending = np.concatenate((pending, mic))
            while pending.size >= FRAME_SAMPLES:
                frame = pending[:FRAME_SAMPLES]
                for name, model in self.models.items():
                    t0 = time.thread_time()
                    model.predict(frame)
                    if counting:
                        self.cpu_s[name] += time.thread_time() - t0
                pending = pending[FRAME_SAMPLES:]


class _IdlePipeline:
    """The daemon's always-on path, run by the daemon's own ``CapturePipeline`` (engine
    callback -> bounded drop-oldest queue -> ears worker), with marks at the window's edges
    on both threads; plus bare openWakeWord loops on the same blocks: the baseline
    (openwakeword's own front end) and the lean front end the daemon runs (a note).

    It stands between the pipeline and the real ``Ears`` (it is the pipeline's listener):
    on the worker thread it marks the CPU clock and tees each block to the bare loops,
    then runs ``Ears.process``.
    """

    def __init__(
        self, ears: Any, bare_model: Any, lean_model: Any, start: int, end: int, maxsize: int
    ) -> None:
        from edge_agent.audio.capture import CapturePipeline
        from edge_agent.core.events import WakeWordDetected

        self.ears = ears
        self.bare = _BareLoop({"stock": bare_model, "lean": lean_model}, start, end, maxsize)
        self.callback = _Marks(start, end)
        self.worker = _Marks(start, end)
        self.wake_events = 0
        self.ears_cpu_at: dict[str, float] = {}
        self._wake_type = WakeWordDetected
        self.capture = CapturePipeline(
            self,
            self._count_events,
            max_blocks=maxsize,
            join_timeout_s=5.0,
            thread_name="bench-ears",
        )

    def start(self) -> None:
        self.capture.start()
        self.bare.thread.start()

    def stop(self) -> None:
        self.capture.stop()
        self.bare.stop()

    @property
    def thread_ids(self) -> set[int]:
        ids = {self.capture.worker_thread_id, self.bare.thread.native_id}
        return {tid for tid in ids if tid is not None}

    @property
    def due_grid(self) -> tuple[int, int] | None:
        """The real Ears' coalescing hint, as the pipeline reads it from the daemon's Ears."""
        return self.ears.due_grid

    def on_block(self, mic: np.ndarray, ref: np.ndarray | None, pos: int) -> Any:
        """PortAudio callback thread: mark, then the pipeline's own (non-blocking) hand-off
        (its answer goes back to the engine, as when the daemon passes it directly)."""
        self.callback.see(pos)
        return self.capture.on_block(mic, ref, pos)

    def process(self, mic: np.ndarray, ref: np.ndarray | None, sample_pos: int) -> list[Any]:
        """The pipeline's worker thread: mark, tee to the bare loops, then the real Ears."""
        had_first = self.worker.first is not None
        self.worker.see(sample_pos)
        if not had_first and self.worker.first is not None:
            self.ears_cpu_at["first"] = self.ears.stats.cpu_s
        if self.worker.done and "last" not in self.ears_cpu_at:
            self.ears_cpu_at["last"] = self.ears.stats.cpu_s
        self.bare.put(mic, sample_pos)
        return self.ears.process(mic, ref, sample_pos)

    def _count_events(self, events: list[Any]) -> None:
        self.wake_events += sum(isinstance(e, self._wake_type) for e in events)


def _idle_audio(seconds: float) -> np.ndarray:
    """Speech in six voices, pauses and -60 dBFS noise, looped to `seconds` (16 kHz)."""
    from edge_agent_devkit.rig import speech

    parts: list[np.ndarray] = []
    total = 0
    want = round(seconds * RATE)
    while total < want:
        for item in IDLE_SCRIPT:
            if isinstance(item, float):
                clip = speech.silence(item)
            else:
                text, voice, wpm = item
                clip = speech.trim(speech.synthesize(text, voice=voice, speed_wpm=wpm))
            parts.append(clip)
            total += clip.size
    audio = speech.concat(*parts)[:want]
    return speech.to_int16(speech.add_noise(audio, IDLE_NOISE_DBFS, np.random.default_rng(7)))


@dataclass(frozen=True)
class _IdleResult:
    audio_s: float
    callback_cpu_s: float
    worker_cpu_s: float
    ears_cpu_s: float
    other_cpu_s: dict[str, float]
    bare_cpu_s: float
    lean_cpu_s: float
    aec_processed: int | None
    aec_bypassed: int | None
    wake_events: int
    input_latency_ms: float

    @property
    def pipeline_cpu_s(self) -> float:
        return self.callback_cpu_s + self.worker_cpu_s + sum(self.other_cpu_s.values())

    def pct(self, cpu_s: float) -> float:
        return 100.0 * cpu_s / self.audio_s


def _idle_pass(model: Any, lean_model: Any, rate: int, window_s: float) -> _IdleResult:
    """One real-time run of the always-on path over the rig at device rate `rate`; `model`
    is the baseline, `lean_model` the same wake model with the daemon's front end."""
    from edge_agent.audio.ears import Ears, EarsConfig
    from edge_agent.audio.echo import Aec3EchoCanceller
    from edge_agent.audio.engine import AudioEngine, EngineState
    from edge_agent.audio.vad import WebRtcVad
    from edge_agent.audio.wakeword import WakeWordDetector
    from edge_agent.core.cues import CueMixer
    from edge_agent.core.jitter import JitterBuffer
    from edge_agent_devkit.rig import speech
    from edge_agent_devkit.rig.alsa_rig import AlsaRig

    cfg = _config()
    audio16 = _idle_audio(IDLE_LEAD_S + window_s + 3.0)
    device_audio = speech.resample(audio16, RATE, rate) if rate != RATE else audio16
    start = round(IDLE_LEAD_S * RATE) // BLOCK * BLOCK
    end = start + round(window_s * RATE) // BLOCK * BLOCK

    logger.info("audio: idle CPU over %.0f s of real-time capture at %d Hz", window_s, rate)
    # What Ears.create builds (own wake model, loaded as the daemon loads it), keeping a
    # handle on the canceller for its counters.
    ears_cfg = EarsConfig.from_settings(cfg)
    aec = (
        Aec3EchoCanceller.create(
            stream_delay_ms=ears_cfg.aec_stream_delay_ms,
            idle_bypass_ms=ears_cfg.aec_idle_bypass_ms,
        )
        if ears_cfg.aec_enabled
        else None
    )
    ears = Ears(
        wake=WakeWordDetector.load(
            ears_cfg.wake_models,
            threshold=ears_cfg.wake_threshold,
            thresholds=ears_cfg.wake_thresholds,
            refractory_s=ears_cfg.wake_refractory_s,
        ),
        is_speech=WebRtcVad(ears_cfg.vad_mode).is_speech,
        echo=aec,
        config=ears_cfg,
    )
    model.reset()
    lean_model.reset()
    jitter = JitterBuffer(  # the daemon's output source; silent while idle
        prefill_ms=cfg.playback.prefill_ms,
        max_ms=cfg.playback.max_buffer_ms,
        fade_ms=cfg.playback.fade_ms,
        gain=cfg.audio.volume_percent / 100,
    )
    cues = CueMixer(cue_volume=cfg.audio.cue_volume_percent / 100)

    def output_source(n: int) -> np.ndarray:
        """What the daemon's output source does on every idle callback: reply audio plus
        cues (its other checks only look further while a reply is due or playing)."""
        return cues.mix_into(jitter.pull(n))

    def output_quiet() -> bool:
        """What the daemon's playback answers the engine while idle (ReplyPlayback.
        output_quiet): nothing to pull."""
        return jitter.is_quiet and not cues.is_playing

    pipe = _IdlePipeline(ears, model, lean_model, start, end, cfg.audio.capture_queue_blocks)
    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-rig-") as tmp:
        rig = AlsaRig(Path(tmp) / "rig")
        rig.add_duplex("benchdup", rate, source=device_audio)
        rig.start()
        engine = AudioEngine(
            input_device="benchdup",
            output_device="benchdup",
            capture_rate_hz=cfg.audio.capture_rate_hz,
            duplex=cfg.echo.enabled,
            duplex_rate_hz=rate,
            block_ms=cfg.audio.block_ms,
            output_source=output_source,
            output_quiet=output_quiet,
            on_block=pipe.on_block,
        )
        pipe.start()
        try:
            state = engine.start()
            if state is not EngineState.RUNNING:
                raise RuntimeError(f"audio engine did not start: {state} ({engine.last_error})")
            deadline = time.monotonic() + IDLE_LEAD_S + 20.0
            while pipe.worker.first is None:
                if time.monotonic() > deadline:
                    raise TimeoutError("no audio reached the ears worker")
                time.sleep(0.01)
            before = _task_cpu()
            deadline = time.monotonic() + window_s + 30.0
            while not (pipe.worker.done and pipe.callback.done and pipe.bare.marks.done):
                if time.monotonic() > deadline:
                    raise TimeoutError("the capture window did not complete in time")
                time.sleep(0.05)
            after = _task_cpu()
            # Python names of the live threads (/proc only knows "python"); rig threads
            # are the sound card's stand-in and must be known before the rig stops.
            py_names = {t.native_id: t.name for t in threading.enumerate()}
            stats = engine.stats()
            input_latency_ms = 1000.0 * (engine.input_latency_s or 0.0)
        finally:
            engine.stop()
            pipe.stop()
            rig.stop()

    failures, dropped = pipe.capture.ears_failures, pipe.capture.dropped_blocks
    if failures:
        raise RuntimeError(f"Ears.process failed {failures} times (the first is in the log)")
    if stats["reopen_count"] or dropped or pipe.bare.dropped:
        raise RuntimeError(
            f"capture was not clean (reopens {stats['reopen_count']}, dropped blocks "
            f"{dropped}, baseline dropped {pipe.bare.dropped})"
        )
    audio_samples = pipe.worker.audio_samples()
    if pipe.bare.marks.audio_samples() != audio_samples:
        raise RuntimeError("the baseline saw a different window than the pipeline")
    rig_ids = {tid for tid, name in py_names.items() if name.startswith("rig-")}
    excluded = {
        threading.main_thread().native_id,
        pipe.callback.tid,
        pipe.worker.tid,
        pipe.bare.marks.tid,
        *pipe.thread_ids,
        *rig_ids,
    }
    others: dict[str, float] = {}
    for tid, (comm, cpu) in after.items():
        if tid in excluded:
            continue
        name = py_names.get(tid, comm)
        delta = cpu - before.get(tid, (comm, 0.0))[1]
        if delta > 0:
            others[name] = others.get(name, 0.0) + delta
    result = _IdleResult(
        audio_s=audio_samples / RATE,
        callback_cpu_s=pipe.callback.cpu_s(),
        worker_cpu_s=pipe.worker.cpu_s(),
        ears_cpu_s=pipe.ears_cpu_at["last"] - pipe.ears_cpu_at["first"],
        other_cpu_s=others,
        bare_cpu_s=pipe.bare.cpu_s["stock"],
        lean_cpu_s=pipe.bare.cpu_s["lean"],
        aec_processed=aec.processed_blocks if aec is not None else None,
        aec_bypassed=aec.bypassed_blocks if aec is not None else None,
        wake_events=pipe.wake_events,
        input_latency_ms=input_latency_ms,
    )
    if result.bare_cpu_s <= 0 or result.pipeline_cpu_s <= 0:
        raise RuntimeError(
            f"no CPU time measured (pipeline {result.pipeline_cpu_s}, bare {result.bare_cpu_s})"
        )
    return result


def _idle_breakdown(r: _IdleResult) -> str:
    others = ", ".join(f"{n} {r.pct(c):.2f}%" for n, c in sorted(r.other_cpu_s.items())) or "none"
    return (
        f"callback thread {r.pct(r.callback_cpu_s):.2f}%, ears worker "
        f"{r.pct(r.worker_cpu_s):.2f}% (inside Ears.process {r.pct(r.ears_cpu_s):.2f}%), "
        f"other threads {r.pct(sum(r.other_cpu_s.values())):.2f}% ({others})"
    )


def measure_idle_cpu(report: PartReport, lean_model: Any, quick: bool) -> None:
    from edge_agent.audio.wakeword import load_openwakeword_model

    cfg = _config()
    window_s = 8.0 if quick else 60.0
    rate = cfg.audio.duplex_rate_hz if cfg.echo.enabled else cfg.audio.capture_rate_hz
    model = load_openwakeword_model([WAKE_MODEL], lean_streaming=False)  # the baseline
    r = _idle_pass(model, lean_model, rate, window_s)
    pct = r.pct(r.pipeline_cpu_s)
    bare_pct, lean_pct = r.pct(r.bare_cpu_s), r.pct(r.lean_cpu_s)
    aec_text = (
        f"; AEC3 processed {r.aec_processed} blocks (its warm-up), bypassed {r.aec_bypassed}"
        if r.aec_processed is not None
        else ""
    )
    note = (
        f"{r.audio_s:.1f} s of real-time capture (speech in 6 voices, pauses, -60 dBFS noise), "
        f"duplex {rate} Hz over the ALSA rig, Ears IDLE (default config): "
        f"{_idle_breakdown(r)}; rig feeder/recorder threads excluded{aec_text}; "
        f"{r.wake_events} wake word(s) heard; PortAudio input latency "
        f"{r.input_latency_ms:.0f} ms."
    )
    if not quick and rate != RATE:
        try:
            r16 = _idle_pass(model, lean_model, RATE, IDLE_16K_WINDOW_S)
            note += (
                f" For comparison, a device that takes 16 kHz directly (no resampling), "
                f"{r16.audio_s:.0f} s: {r16.pct(r16.pipeline_cpu_s):.2f}% of one core "
                f"({_idle_breakdown(r16)}), {r16.pipeline_cpu_s / r16.bare_cpu_s:.2f}x its bare "
                f"openwakeword."
            )
        except Exception as exc:  # a note only; the figure above stands
            logger.warning("idle CPU at 16 kHz failed: %s", exc)
            note += f" (The 16 kHz comparison run failed: {exc}.)"
    report.put("idle_cpu_percent_of_core", pct, note)
    report.put(
        "idle_cpu_ratio_vs_bare_openwakeword",
        pct / bare_pct,
        f"bare openWakeWord predict (80 ms frames, openwakeword's own streaming front end, own "
        f"model, own thread) on the same "
        f"{r.audio_s:.1f} s of blocks in the same window: {bare_pct:.2f}% of one core.",
    )
    report.put(
        "idle_cpu_ratio_vs_lean_wake_model",
        pct / lean_pct,
        f"the same bare loop with the daemon's lean front end (edge_agent.audio.oww_tflite; "
        f"same scores) in the same window: {lean_pct:.2f}% of one core, so everything but the "
        f"wake model costs {pct - lean_pct:.2f}% of one core; openwakeword's own front end "
        f"costs {bare_pct - lean_pct:.2f}% more than the lean one.",
    )


# --------------------------------------------------------------------------- wake delay


def measure_wake_delay(report: PartReport, model: Any) -> None:
    from edge_agent.core.events import WakeWordDetected
    from edge_agent_devkit.rig import speech

    logger.info("audio: wake word delay over %d voices", len(speech.WAKE_CASES))
    delays: list[float] = []
    end_errors: list[float] = []
    missed: list[str] = []
    for voice, wpm, gap in speech.WAKE_CASES:
        clip = speech.wake_phrase_clip(voice, wpm, gap_s=gap)
        ears = _make_ears(model, aec=True)
        zeros = np.zeros(BLOCK, dtype=np.int16)
        emitted: tuple[int, Any] | None = None
        for i in range(0, clip.audio.size - BLOCK + 1, BLOCK):
            for ev in ears.process(clip.audio[i : i + BLOCK], zeros, i):
                if isinstance(ev, WakeWordDetected) and emitted is None:
                    emitted = (i + BLOCK, ev)
        if emitted is None:
            missed.append(f"{voice}@{wpm}")
            continue
        delays.append(_ms(emitted[0] - clip.wake_end))
        end_errors.append(_ms(emitted[1].end_sample - clip.wake_end))
    if len(delays) < 6:
        raise RuntimeError(
            f"the wake word was detected in only {len(delays)} of {len(speech.WAKE_CASES)} voices "
            f"(missed: {', '.join(missed)})"
        )
    report.put(
        "wake_detection_delay_ms",
        statistics.median(delays),
        f"median over {len(delays)} espeak-ng voices (ms: {_summary(delays)}); missed: "
        f"{', '.join(missed) or 'none'}; measured in capture samples to the end of the block "
        f"that emitted WakeWordDetected (input device buffering comes on top); the reported "
        f"phrase end was off by {_summary(end_errors)} ms.",
    )


# --------------------------------------------------------------------------- echo


@dataclass(frozen=True)
class _Track:
    played: np.ndarray  # 16 kHz reference (what the speaker was given)
    modes: dict[int, Any]  # block start sample -> policy applied before that block
    replies: list[tuple[int, int]]


def _echo_track(replies: Sequence[np.ndarray], seconds: float, offset: int) -> _Track:
    """Replies with the daemon's mode changes around them, `seconds` long (whole blocks)."""
    from edge_agent.core.policy import AgentState, BargeInRules, Uplink, decide
    from edge_agent_devkit.rig import speech

    rules = BargeInRules()
    parts = [speech.silence(ECHO_LEAD_S)]
    pos = parts[0].size
    modes: dict[int, Any] = {}
    spans: list[tuple[int, int]] = []
    k = offset
    want = round(seconds * RATE)
    while pos < want:
        reply = replies[k % len(replies)]
        k += 1
        modes[pos] = decide(AgentState.SPEAKING, rules)
        spans.append((pos, pos + reply.size))
        parts.append(reply)
        pos += reply.size
        # The follow-up window 100 ms later.
        modes[pos + 10 * BLOCK] = decide(AgentState.FOLLOW_UP, rules, uplink=Uplink(None, k))
        follow = _pad_to_block(speech.silence(FOLLOW_UP_S + 0.1))
        parts.append(follow)
        pos += follow.size
        modes[pos] = decide(AgentState.IDLE, rules)
        gap = _pad_to_block(speech.silence(IDLE_GAP_S))
        parts.append(gap)
        pos += gap.size
    return _Track(speech.concat(*parts), modes, spans)


class _TapEcho:
    """Wraps the real canceller and keeps its output (for the in-pipeline ERLE note)."""

    def __init__(self) -> None:
        self.inner: Any = None
        self.latency_samples = 0
        self.out: list[np.ndarray] = []

    def wrap(self, inner: Any) -> _TapEcho:
        self.inner = inner
        self.latency_samples = int(inner.latency_samples)
        return self

    @property
    def bypassed(self) -> bool:
        return bool(self.inner.bypassed)

    def process(self, mic: np.ndarray, ref: np.ndarray | None) -> Any:
        y = self.inner.process(mic, ref)
        self.out.append(np.array(y.cleaned, dtype=np.int16, copy=True))
        return y


def _play_track(ears: Any, mic: np.ndarray, track: _Track) -> list[tuple[int, Any]]:
    events: list[tuple[int, Any]] = []
    for i in range(0, mic.size - BLOCK + 1, BLOCK):
        policy = track.modes.get(i)
        if policy is not None:
            ears.apply(policy)
        for ev in ears.process(mic[i : i + BLOCK], track.played[i : i + BLOCK], i):
            events.append((i + BLOCK, ev))
    return events


def _far_end_mask(echo: np.ndarray, n: int) -> np.ndarray:
    """Blocks where the echo is within 40 dB of its loudest block (far-end-only: no user)."""
    from edge_agent.audio.echo import block_energy_db
    from edge_agent_devkit.rig import speech

    blocks = n // BLOCK
    db = np.array(
        [block_energy_db(speech.to_int16(echo[b * BLOCK : (b + 1) * BLOCK])) for b in range(blocks)]
    )
    return np.repeat(db > db.max() - 40.0, BLOCK)


def measure_echo(report: PartReport, model: Any, quick: bool) -> None:
    from edge_agent.audio.echo import Aec3EchoCanceller
    from edge_agent.core.events import BargeInDetected, SpeechStarted, WakeWordDetected
    from edge_agent_devkit.rig import speech

    rooms = _rooms()[:1] if quick else _rooms()
    per_room_s = 25.0 if quick else 75.0
    logger.info("audio: echo run, %d room(s) x %.0f s, AEC on and off", len(rooms), per_room_s)
    replies = [_reply_16k(t, v, w, REPLY_DBFS) for t, v, w in ECHO_REPLIES]
    kinds = (WakeWordDetected, BargeInDetected, SpeechStarted)
    on_counts = dict.fromkeys((k.__name__ for k in kinds), 0)
    off_counts = dict.fromkeys((k.__name__ for k in kinds), 0)
    erles: list[float] = []
    noisy_erles: list[float] = []
    total_s = 0.0
    wake_phrases = 0
    for r, room in enumerate(rooms):
        track = _echo_track(replies, per_room_s, offset=2 * r)
        n = track.played.size
        total_s += n / RATE
        wake_phrases += sum(
            ECHO_REPLIES[(2 * r + j) % len(ECHO_REPLIES)][0].lower().count("hey jarvis")
            for j in range(len(track.replies))
        )
        rng = np.random.default_rng(100 + r)
        ir = speech.room_impulse_response(room, rng)
        echo = _fft_convolve(track.played, ir)[:n]
        mic = speech.to_int16(speech.add_noise(echo, room.noise_dbfs, rng))
        quiet_mic = speech.to_int16(speech.add_noise(echo, ERLE_NOISE_DBFS, rng))
        mask = _far_end_mask(echo, n)

        aec = Aec3EchoCanceller.create()
        cleaned = np.concatenate(
            [
                aec.process(quiet_mic[i : i + BLOCK], track.played[i : i + BLOCK]).cleaned
                for i in range(0, n, BLOCK)
            ]
        )
        erles.append(speech.erle_db(quiet_mic, cleaned, mask))

        tap = _TapEcho()
        ears = _make_ears(model, aec=True, wrap_echo=tap.wrap)
        on_events = _play_track(ears, mic, track)
        noisy_erles.append(speech.erle_db(mic, np.concatenate(tap.out), mask))

        raw = _make_ears(model, aec=False, guard=False)
        off_events = _play_track(raw, mic, track)
        for kind in kinds:
            on_counts[kind.__name__] += sum(isinstance(e, kind) for _, e in on_events)
            off_counts[kind.__name__] += sum(isinstance(e, kind) for _, e in off_events)

    minutes = total_s / 60.0
    report.put(
        "echo_erle_db",
        statistics.median(erles),
        f"median over {len(rooms)} simulated room(s) of AEC3's echo reduction on far-end-only "
        f"blocks (noise {ERLE_NOISE_DBFS:.0f} dBFS): {_summary(erles, ' dB')}; inside the "
        f"pipeline with room noise (-55..-65 dBFS) the same measure gives "
        f"{_summary(noisy_erles, ' dB')} (the noise floor caps it).",
    )
    report.put(
        "echo_self_triggers",
        sum(on_counts.values()),
        f"{minutes:.1f} min of device replies ({wake_phrases} spoken 'hey jarvis') in "
        f"{len(rooms)} room(s), Ears with AEC3: {on_counts}.",
    )
    report.put(
        "baseline_echo_self_triggers_aec_off",
        sum(off_counts.values()),
        f"same audio, echo cancellation off and no playback guard: {off_counts}.",
    )


# --------------------------------------------------------------------------- voice barge-in


def _talking_block(reply24: np.ndarray, at: float) -> int | None:
    """First 10 ms block from `at` (fraction of the reply) after which the reply keeps
    talking for ONSET_TALK_MS with no pause of 100 ms: the user interrupts speech, not a
    pause between sentences (there the device would be silent already)."""
    blocks = reply24.size // OUT_BLOCK
    active = (
        np.abs(reply24[: blocks * OUT_BLOCK].astype(np.int32))
        .reshape(blocks, OUT_BLOCK)
        .max(axis=1)
        > 300
    )
    need = ONSET_TALK_MS // 10
    for b in range(int(at * blocks), blocks - need):
        if not active[b]:
            continue
        run = 0
        for a in active[b : b + need]:
            run = 0 if a else run + 1
            if run >= 10:
                break
        else:
            return b
    return None


def _barge_case(
    model: Any,
    room: Any,
    reply: tuple[str, str, int],
    user: tuple[str, str, int],
    at: float,
    seed: int,
) -> tuple[float, float] | str:
    """One closed-loop case: (barge-in ms to silence, detection ms) or why it failed."""
    from edge_agent.core.events import BargeInDetected
    from edge_agent.core.jitter import JitterBuffer
    from edge_agent.core.policy import AgentState, BargeInRules, decide
    from edge_agent_devkit.rig import speech

    cfg = _config()

    def new_buffer() -> JitterBuffer:
        return JitterBuffer(
            sample_rate_hz=OUT_RATE,
            prefill_ms=cfg.playback.prefill_ms,
            max_ms=cfg.playback.max_buffer_ms,
            fade_ms=cfg.playback.fade_ms,
            gain=cfg.audio.volume_percent / 100,
        )

    text, voice, wpm = reply
    reply24 = speech.to_int16(
        speech.scale_to_dbfs(
            speech.trim(speech.synthesize(text, voice=voice, speed_wpm=wpm, sample_rate=OUT_RATE)),
            REPLY_DBFS + 2.0,  # before the default 80% volume
        )
    )
    lead_blocks = round(ECHO_LEAD_S * 100)
    n_blocks = lead_blocks + -(-reply24.size // OUT_BLOCK) + 150
    # What the device plays when nobody interrupts (whole reply pushed at once).
    dry = new_buffer()
    played: list[np.ndarray] = []
    for k in range(n_blocks):
        if k == lead_blocks:
            dry.push(reply24.tobytes())
            dry.mark_turn_complete()
        played.append(dry.pull(OUT_BLOCK))
    played24 = np.concatenate(played)
    ref16 = speech.resample(played24, OUT_RATE, RATE)
    ref16 = np.concatenate((ref16, np.zeros(max(0, n_blocks * BLOCK - ref16.size), np.int16)))
    ref16 = ref16[: n_blocks * BLOCK]
    rng = np.random.default_rng(seed)
    echo = _fft_convolve(ref16, speech.room_impulse_response(room, rng))[: ref16.size]
    words = speech.trim(speech.synthesize(user[0], voice=user[1], speed_wpm=user[2]))
    onset_block = _talking_block(reply24, at)
    if onset_block is None:
        return f"the reply has no {ONSET_TALK_MS} ms stretch without a pause after {at:.0%}"
    user_start = (lead_blocks + onset_block) * BLOCK
    near = np.zeros(ref16.size)
    m = min(words.size, ref16.size - user_start)
    near[user_start : user_start + m] = speech.scale_to_dbfs(words, USER_DBFS)[:m]
    mic = speech.to_int16(speech.add_noise(echo + near, room.noise_dbfs, rng))

    ears = _make_ears(model, aec=True)
    live = new_buffer()
    written: list[np.ndarray] = []
    detected_block: int | None = None
    detect_ms = 0.0
    for k in range(n_blocks):
        if k == lead_blocks:
            live.push(reply24.tobytes())
            live.mark_turn_complete()
            ears.apply(decide(AgentState.SPEAKING, BargeInRules.from_config(cfg)))
        out = live.pull(OUT_BLOCK)
        written.append(out)
        if detected_block is None:
            if not np.array_equal(out, played[k]):
                raise RuntimeError("closed loop diverged before the barge-in")
            i = k * BLOCK
            for ev in ears.process(mic[i : i + BLOCK], ref16[i : i + BLOCK], i):
                if isinstance(ev, BargeInDetected):
                    if i + BLOCK <= user_start:
                        return f"false barge-in {_ms(user_start - i):.0f} ms before the user"
                    detected_block = k
                    detect_ms = _ms(i + BLOCK - user_start)
                    live.clear()  # the daemon's FlushPlayback
                    break
        elif k > detected_block + 5:
            break
    if detected_block is None:
        return "no barge-in detected"
    out24 = np.concatenate(written)
    nonzero = np.flatnonzero(out24)
    last = int(nonzero[-1]) + 1 if nonzero.size else 0
    silent_ms = _ms(last + OUT_BLOCK, OUT_RATE) - _ms(user_start)
    return silent_ms, detect_ms


def measure_voice_barge_in(report: PartReport, model: Any, quick: bool) -> None:
    rooms = _rooms()
    cases = [
        (rooms[k], BARGE_REPLIES[(k + j) % len(BARGE_REPLIES)], BARGE_USERS[j], 0.3 + 0.15 * j)
        for k in range(len(rooms))
        for j in range(len(BARGE_USERS))
    ]
    if quick:
        cases = [cases[0], cases[4]]
    logger.info("audio: voice barge-in, %d closed-loop cases", len(cases))
    totals: list[float] = []
    detects: list[float] = []
    failures: list[str] = []
    for n, (room, reply, user, at) in enumerate(cases):
        result = _barge_case(model, room, reply, user, at, seed=200 + n)
        if isinstance(result, str):
            failures.append(f"room {room.direct_gain_db:+.0f} dB / {user[0]!r}: {result}")
        else:
            totals.append(result[0])
            detects.append(result[1])
    if not totals or len(failures) * 2 > len(cases):
        raise RuntimeError(f"barge-in failed in {len(failures)} of {len(cases)} cases: {failures}")
    report.put(
        "voice_barge_in_ms",
        statistics.median(totals),
        f"median over {len(totals)} of {len(cases)} cases (ms: {_summary(totals)}); detection "
        f"alone (user onset -> BargeInDetected) {_summary(detects)} ms; the rest is the "
        f"jitter buffer's {_config().playback.fade_ms} ms fade-out and one 10 ms device block. "
        f"Failures: {'; '.join(failures) or 'none'}.",
    )


# --------------------------------------------------------------------------- underruns


def _simulate_jitter(prefill_ms: int, reply_minutes: float, seed: int) -> tuple[int, int, int]:
    """(underruns, silent underrun samples, reply samples pushed) on a simulated clock."""
    from edge_agent.core.jitter import JitterBuffer

    cfg = _config()
    rng = np.random.default_rng(seed)
    buf = JitterBuffer(
        sample_rate_hz=OUT_RATE,
        prefill_ms=prefill_ms,
        max_ms=cfg.playback.max_buffer_ms,
        fade_ms=cfg.playback.fade_ms,
    )
    chunk_samples = OUT_RATE * JITTER_CHUNK_MS // 1000
    chunk = (rng.standard_normal(chunk_samples) * 3000).astype("<i2").tobytes()
    # (arrival time, is_turn_complete); arrival order is send order (one TCP stream).
    arrivals: list[tuple[float, bool]] = []
    t = 0.5
    pushed = 0
    want = reply_minutes * 60 * OUT_RATE
    while pushed < want:
        n = int(rng.integers(100, 300))  # 4-12 s turns
        last = -1.0
        for c in range(n):
            nominal = t + c * JITTER_CHUNK_MS / 1000
            last = max(last, nominal + rng.uniform(-JITTER_MS / 1000, JITTER_MS / 1000))
            arrivals.append((last, False))
        arrivals.append((last, True))
        pushed += n * chunk_samples
        t = last + 2.0  # the user talks, the model thinks
    end = t + 1.0
    tick = rng.uniform(0.0, 0.01)
    a = 0
    while tick < end:
        while a < len(arrivals) and arrivals[a][0] <= tick:
            if arrivals[a][1]:
                buf.mark_turn_complete()
            else:
                buf.push(chunk)
            a += 1
        buf.pull(OUT_BLOCK)
        tick += 0.01
    return buf.underruns, buf.underrun_samples, pushed


def measure_underruns(report: PartReport, quick: bool) -> None:
    cfg = _config()
    minutes = 2.0 if quick else 30.0
    logger.info("audio: jitter buffer underruns over %.0f simulated minutes", minutes)
    prefill = cfg.playback.prefill_ms
    with_buf = _simulate_jitter(prefill, minutes, seed=1)
    without = _simulate_jitter(0, minutes, seed=1)
    played_min = with_buf[2] / OUT_RATE / 60
    report.put(
        "underruns_per_minute",
        with_buf[0] / played_min,
        f"real JitterBuffer, prefill {prefill} ms, fade {cfg.playback.fade_ms} ms; "
        f"{played_min:.1f} min of reply audio in {JITTER_CHUNK_MS} ms chunks at real-time pace "
        f"with +-{JITTER_MS} ms uniform arrival jitter (simulated clock, 10 ms pulls): "
        f"{with_buf[0]} underruns, {_ms(with_buf[1], OUT_RATE):.0f} ms of silence.",
    )
    report.put(
        "baseline_underruns_per_minute_no_jitter_buffer",
        without[0] / (without[2] / OUT_RATE / 60),
        f"same arrivals (same seed), prefill 0 (play as it arrives): {without[0]} underruns, "
        f"{_ms(without[1], OUT_RATE):.0f} ms of silence.",
    )

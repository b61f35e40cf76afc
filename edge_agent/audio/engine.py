"""The sound card edge: PyAudio capture and playback, duplex for echo cancellation.

Threads:

* **PortAudio's callback thread(s)** run the stream callbacks. They never block: the mic
  side resamples to 16 kHz, cuts fixed blocks (``block_ms``, 10 ms = 160 samples by
  default, as AEC3 wants) and hands each to ``on_block(mic, ref, pos)`` (which must not
  block either; the daemon puts it on a bounded queue) or, without ``on_block``, to
  :attr:`AudioEngine.blocks`, a bounded queue that drops the oldest block when full
  (counted in ``dropped_blocks``). The speaker side pulls 24 kHz audio from
  ``output_source(n)``, resamples it to the device rate and writes it.
* **The supervisor thread** owns every PortAudio call (initialise, open, start, close,
  terminate). It watches the streams and reopens them with backoff when a device fails.

Modes:

* **Separate streams** (echo cancellation off): a capture stream at 16 kHz when the device
  takes it, otherwise at the first supported rate of ``capture_rates_hz`` resampled to
  16 kHz; a playback stream at ``playback_rate_hz`` or a fallback rate. ``ref`` is then what
  the output callback played, resampled to 16 kHz and handed to the mic side through a
  short bounded hand-off: in step by sample count but only aligned to within a device
  period or two, too loose for echo cancellation and meant for the playback guard that
  keeps the wake word and VAD from firing on the device's own voice.
* **Full duplex** (``duplex=True``, echo cancellation on, DESIGN.md section 6): ONE stream with
  input and output at one device rate. In its callback the output block is rendered first,
  and the echo reference is exactly that device-rate block resampled to 16 kHz by its own
  streaming resampler, the twin of the mic's: both resamplers see the same number of
  samples per callback, so reference and mic stay sample-aligned (``ref`` is the output of
  the same callback as ``mic``; zeros while nothing plays). PortAudio's ALSA backend opens
  the two directions as two pcms and runs them in one callback thread, so input and output
  may even be *different* ALSA devices (verified over the test rig); on real hardware keep
  them on one card, because two cards have two clocks and drift into xruns.

Device loss: a stream that stops on its own (``is_active()`` false: ALSA error, unplugged
device), a callback that has not run for ``stall_timeout_s`` (a wedged device), or a failed
open are logged once, the state goes to ``reopening`` with ``last_error`` set, and the
supervisor closes everything, calls ``Pa_Terminate()`` (PortAudio only sees a re-plugged
device after a full terminate + initialise) and tries again after ``backoff.next_delay()``.
The backoff resets once a reopened device has run for ``stable_after_s``.

A lost *speaker* must not make the device deaf (a USB speaker unplugged, an HDMI TV
switched off). When the mic opens but the output is missing or fails to open, in duplex
and in separate-stream mode alike, the engine runs a **degraded** capture-only session:
state ``degraded`` (still :attr:`AudioEngine.healthy`, :attr:`AudioEngine.output_missing`
true, ``last_error`` says why), ``ref`` is zeros (nothing plays, so nothing echoes), and the
output source is still pulled at the mic's real-time pace and discarded, so the jitter
buffer drains as if the reply had played: the conversation moves on, and a reply from
minutes ago does not burst out when the speaker returns. The same happens when a running
output stream stops or stalls (or the duplex stream stops: the mic is then reopened alone
first, and if that fails too it is the mic and the engine reopens as above). While degraded
the supervisor retries the full configuration after ``backoff.next_delay()`` (a brief
teardown and reopen: the gap in capture is one stream open), and the backoff is not reset
by a stable degraded session, so retries settle at ``reopen_max_delay_s``. A stalled input
and a missing input device are handled as before, in every mode.

``stop()`` returns within ``stop_timeout_s`` even if a close is stuck inside the driver
(``Pa_CloseStream`` waits for the callback thread, which PortAudio cannot cancel while it is
inside ALSA); the supervisor then finishes closing in the background. PortAudio's device
list only refreshes when no other PyAudio instance in the process is alive, so the engine
should be the only long-lived PyAudio user.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import numpy as np
import pyaudio

from edge_agent.audio import devices as dev
from edge_agent.audio.resample import StreamResampler

logger = logging.getLogger(__name__)

MIC_RATE_HZ = 16_000
SOURCE_RATE_HZ = 24_000

DEFAULT_CAPTURE_RATES_HZ = (16_000, 48_000, 44_100, 32_000, 96_000, 22_050, 8_000)
DEFAULT_PLAYBACK_RATES_HZ = (24_000, 48_000, 44_100, 16_000, 32_000, 22_050, 96_000)
DEFAULT_DUPLEX_RATES_HZ = (48_000, 16_000, 44_100, 32_000, 24_000, 96_000)

OutputSource = Callable[[int], np.ndarray]
"""``output_source(n)`` -> exactly ``n`` int16 samples at 24 kHz (called on the audio thread)."""

BlockCallback = Callable[[np.ndarray, np.ndarray | None, int], None]
"""``on_block(mic, ref, capture_sample_pos)``: 16 kHz int16 blocks; must not block."""

_SILENCE = np.zeros(0, dtype=np.int16)
_PLAYED_HANDOFF_SAMPLES = MIC_RATE_HZ // 5  # 200 ms: more means the mic side is stalled
_MAX_RENDER_PULLS = 8  # per callback; only the resampler's first call needs more than one


class EngineState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    DEGRADED = "degraded"  # capture runs, the speaker is missing; retrying it with backoff
    REOPENING = "reopening"  # a device failed or is missing; retrying with backoff
    # A retry cannot help until config or hardware change (still retried): an ambiguous
    # input name. An ambiguous output name degrades instead (the mic must keep listening).
    FAILED = "failed"


class BackoffPolicy(Protocol):
    """Delays between reopen attempts."""

    def next_delay(self) -> float: ...

    def reset(self) -> None: ...


class ExponentialBackoff:
    """``initial_s * multiplier**n`` capped at ``max_s``; no jitter (one device, one client)."""

    def __init__(self, initial_s: float = 0.25, max_s: float = 10.0, multiplier: float = 2.0):
        if initial_s <= 0 or max_s < initial_s or multiplier < 1:
            raise ValueError("bad backoff parameters")
        self.initial_s, self.max_s, self.multiplier = initial_s, max_s, multiplier
        self._attempt = 0

    def next_delay(self) -> float:
        delay = min(self.max_s, self.initial_s * self.multiplier ** min(self._attempt, 64))
        self._attempt += 1
        return delay

    def reset(self) -> None:
        self._attempt = 0


@dataclass(frozen=True)
class CaptureBlock:
    """One 16 kHz block: the mic, its aligned echo reference (duplex only), its position."""

    mic: np.ndarray
    ref: np.ndarray | None
    pos: int


@dataclass
class _Session:
    """One open set of streams (replaced wholesale on every reopen)."""

    pa: pyaudio.PyAudio
    stop: threading.Event  # the run's stop flag
    duplex: bool
    in_name: str = ""
    out_name: str = ""
    in_index: int = -1
    out_index: int | None = None
    in_rate: int = 0
    in_channels: int = 1
    out_rate: int = 0
    out_channels: int = 1
    mic_rs: StreamResampler | None = None
    ref_rs: StreamResampler | None = None
    out_rs: StreamResampler | None = None
    streams: list[tuple[str, Any]] = field(default_factory=list)
    mic_acc: np.ndarray = field(default_factory=lambda: _SILENCE)
    ref_acc: np.ndarray = field(default_factory=lambda: _SILENCE)
    out_ring: np.ndarray = field(default_factory=lambda: _SILENCE)
    # Separate streams: played audio at 16 kHz waiting for the mic side (under played_lock).
    played16: np.ndarray = field(default_factory=lambda: _SILENCE)
    played_lock: threading.Lock = field(default_factory=threading.Lock)
    started_at: float = 0.0
    last_in: float = 0.0
    last_out: float = 0.0
    watch_output: bool = False
    input_latency_s: float = 0.0  # PortAudio's figure for the opened streams
    output_latency_s: float = 0.0
    stable: bool = False
    closing: bool = False
    # Degraded: capture only, because the configured output is missing or failing.
    degraded: bool = False
    output_problem: str = ""
    discard_credit: float = 0.0  # 24 kHz samples owed to the output source (fractional)


class _Outcome(StrEnum):
    """Why :meth:`AudioEngine._watch` returned."""

    STOP = "stop"  # stop() was called
    INPUT = "input"  # the mic failed or stalled: reopen everything with backoff
    OUTPUT = "output"  # the speaker failed (or the duplex stream stopped): mic alone at once
    RETRY = "retry"  # degraded: time to try the full configuration again


@dataclass
class _Run:
    """One start()..stop() lifetime; a stuck old supervisor only ever touches its own run."""

    id: int
    stop: threading.Event = field(default_factory=threading.Event)
    first_attempt_done: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class AudioEngine:
    """Capture (16 kHz blocks out) and playback (24 kHz source in) over PyAudio.

    The constructor only stores settings; :meth:`start` opens the devices on the supervisor
    thread and returns once the first attempt has succeeded or failed (it never raises for
    device problems: watch :attr:`state` / :attr:`healthy` / :attr:`last_error`).
    """

    _run_ids = itertools.count(1)

    def __init__(
        self,
        *,
        input_device: str = "default",
        output_device: str | None = "default",
        capture_rate_hz: int = MIC_RATE_HZ,
        capture_rates_hz: tuple[int, ...] = DEFAULT_CAPTURE_RATES_HZ,
        playback_rate_hz: int = SOURCE_RATE_HZ,
        playback_rates_hz: tuple[int, ...] = DEFAULT_PLAYBACK_RATES_HZ,
        duplex: bool = False,
        duplex_rate_hz: int = 48_000,
        duplex_rates_hz: tuple[int, ...] = DEFAULT_DUPLEX_RATES_HZ,
        block_ms: int = 10,
        queue_blocks: int = 500,
        output_source: OutputSource | None = None,
        on_block: BlockCallback | None = None,
        reopen_max_delay_s: float = 10.0,
        backoff: BackoffPolicy | None = None,
        stall_timeout_s: float = 2.0,
        stable_after_s: float = 5.0,
        stop_timeout_s: float = 0.45,
        start_timeout_s: float = 5.0,
        monitor_interval_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if block_ms <= 0 or MIC_RATE_HZ * block_ms % 1000:
            raise ValueError(f"block_ms={block_ms} is not a whole number of 16 kHz samples")
        if duplex and not output_device:
            raise ValueError("duplex needs an output device")
        if queue_blocks < 1:
            raise ValueError("queue_blocks must be >= 1")
        self.input_device = input_device
        self.output_device = output_device or None
        self.capture_rates_hz = dev.unique_rates(capture_rate_hz, capture_rates_hz)
        self.playback_rates_hz = dev.unique_rates(playback_rate_hz, playback_rates_hz)
        self.duplex = duplex
        self.duplex_rates_hz = dev.unique_rates(duplex_rate_hz, duplex_rates_hz)
        self.block_ms = block_ms
        self.block_samples = MIC_RATE_HZ * block_ms // 1000
        self._output_source = output_source
        self._on_block = on_block
        self._backoff: BackoffPolicy = backoff or ExponentialBackoff(
            initial_s=min(0.25, reopen_max_delay_s), max_s=reopen_max_delay_s
        )
        self.stall_timeout_s = stall_timeout_s
        self.stable_after_s = stable_after_s
        self.stop_timeout_s = stop_timeout_s
        self.start_timeout_s = start_timeout_s
        self.monitor_interval_s = monitor_interval_s
        self._clock = clock

        self.blocks: queue.Queue[CaptureBlock] = queue.Queue(maxsize=queue_blocks)
        """Captured blocks when no ``on_block`` is given (bounded, drop-oldest)."""

        self._state = EngineState.STOPPED
        self._last_error: str | None = None
        self._logged_error: str | None = None
        self._run: _Run | None = None
        self._session: _Session | None = None
        self._input_stalled = False  # see input_stalled
        self._played_24k = 0.0
        self._exact_names: dict[str, bool] = {}  # direction -> configured name matched in full
        self._degraded_since: float | None = None  # start of the current degraded episode
        # Counters: written on the audio thread, read anywhere (int updates are atomic).
        self.captured_samples = 0
        self.played_device_samples = 0
        self.pulled_samples_24k = 0
        self.dropped_blocks = 0
        self.input_overflows = 0
        self.output_underflows = 0
        self.callback_errors = 0
        self.source_errors = 0
        self.reopen_count = 0
        self.output_retries = 0  # degraded: attempts to get the speaker back
        self.discarded_samples_24k = 0  # pulled from the source while no speaker was open

    # ------------------------------------------------------------------ public API

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def healthy(self) -> bool:
        """True while the mic is open and running, with or without the speaker (see
        :attr:`output_missing`): the daemon keeps listening for the wake word then."""
        return self._state in (EngineState.RUNNING, EngineState.DEGRADED)

    @property
    def output_missing(self) -> bool:
        """Capture runs without playback because the speaker is missing or failing (state
        ``degraded``; ``last_error`` says why); playback resumes by itself when it is back."""
        return self._state is EngineState.DEGRADED

    @property
    def last_error(self) -> str | None:
        """Why the devices last failed (kept after recovery, for status displays)."""
        return self._last_error

    @property
    def played_samples_24k(self) -> int:
        """What has been handed to the device, counted in 24 kHz samples (exact when the
        device runs at 24 kHz; otherwise device samples scaled by 24000/rate)."""
        return int(self._played_24k)

    @property
    def input_rate_hz(self) -> int | None:
        s = self._session
        return s.in_rate if s else None

    @property
    def output_rate_hz(self) -> int | None:
        s = self._session
        return s.out_rate if s and s.out_rate else None

    @property
    def input_device_name(self) -> str | None:
        s = self._session
        return s.in_name if s else None

    @property
    def output_device_name(self) -> str | None:
        s = self._session
        return s.out_name if s and s.out_name else None

    @property
    def output_latency_s(self) -> float | None:
        """PortAudio's output latency of the open stream (the ALSA buffer): audio handed
        to the device plays this much later. None when no output is open."""
        s = self._session
        return s.output_latency_s if s and s.out_rate else None

    @property
    def input_latency_s(self) -> float | None:
        s = self._session
        return s.input_latency_s if s else None

    @property
    def input_stalled(self) -> bool:
        """The mic went silent while open (wedged), and no audio has come since, whatever
        the reopen attempts report: the daemon's watchdog then stops pinging."""
        return self._input_stalled

    @property
    def duplex_active(self) -> bool:
        s = self._session
        return bool(s and s.duplex)

    def start(self) -> EngineState:
        """Open the devices (on the supervisor thread); wait for the first attempt."""
        run = self._run
        if run is not None and not run.stop.is_set():
            return self._state
        run = _Run(next(self._run_ids))
        run.thread = threading.Thread(
            target=self._supervise, args=(run,), name="audio-engine", daemon=True
        )
        self._run = run
        self._state = EngineState.STARTING
        run.thread.start()
        run.first_attempt_done.wait(self.start_timeout_s)
        return self._state

    def stop(self) -> None:
        """Close everything; idempotent; returns within ``stop_timeout_s``."""
        run = self._run
        if run is None or run.stop.is_set():
            self._state = EngineState.STOPPED
            return
        run.stop.set()
        if run.thread is not None and run.thread is not threading.current_thread():
            run.thread.join(self.stop_timeout_s)
            if run.thread.is_alive():
                logger.warning(
                    "audio streams did not close within %.2f s (driver stuck); "
                    "they will finish closing in the background",
                    self.stop_timeout_s,
                )
        self._session = None
        self._state = EngineState.STOPPED

    def get_block(self, timeout: float | None = None) -> CaptureBlock | None:
        """Next block from :attr:`blocks` (queue mode), or None after ``timeout``."""
        try:
            return self.blocks.get(timeout=timeout)
        except queue.Empty:
            return None

    def stats(self) -> dict[str, Any]:
        """A snapshot for status output."""
        return {
            "state": str(self._state),
            "last_error": self._last_error,
            "input_device": self.input_device_name,
            "output_device": self.output_device_name,
            "input_rate_hz": self.input_rate_hz,
            "output_rate_hz": self.output_rate_hz,
            "duplex": self.duplex_active,
            "input_latency_s": self.input_latency_s,
            "output_latency_s": self.output_latency_s,
            "captured_samples": self.captured_samples,
            "played_samples_24k": self.played_samples_24k,
            "played_device_samples": self.played_device_samples,
            "dropped_blocks": self.dropped_blocks,
            "input_overflows": self.input_overflows,
            "output_underflows": self.output_underflows,
            "callback_errors": self.callback_errors,
            "source_errors": self.source_errors,
            "reopen_count": self.reopen_count,
            "output_missing": self.output_missing,
            "output_retries": self.output_retries,
            "discarded_samples_24k": self.discarded_samples_24k,
        }

    # ------------------------------------------------------------------ supervisor

    def _is_current(self, run: _Run) -> bool:
        return self._run is run and not run.stop.is_set()

    def _supervise(self, run: _Run) -> None:
        try:
            # Set when the speaker just failed: reopen the mic alone at once, no backoff wait.
            output_problem: str | None = None
            while not run.stop.is_set():
                try:
                    session = self._open_session(run, output_problem)
                except Exception as exc:
                    self._report_failure(run, exc)
                    run.first_attempt_done.set()
                    output_problem = None
                    if run.stop.wait(self._backoff.next_delay()):
                        break
                    continue
                output_problem = None
                if not self._is_current(run):
                    self._teardown(session)
                    break
                self._session = session
                self._report_running(session)
                run.first_attempt_done.set()
                outcome, reason = self._watch(run, session)
                if outcome is _Outcome.STOP or not self._is_current(run):
                    self._teardown(session)
                    break
                if outcome is _Outcome.RETRY:  # planned: state stays degraded meanwhile
                    self.output_retries += 1
                    self._teardown(session)
                    continue
                self.reopen_count += 1
                if outcome is _Outcome.OUTPUT:
                    self._report_output_lost(run, reason)  # before a teardown that may hang
                    self._teardown(session)
                    output_problem = reason
                    continue
                self._report_failure(run, dev.AudioDeviceError(reason))
                self._teardown(session)
                if run.stop.wait(self._backoff.next_delay()):
                    break
        except Exception:  # a bug here must not leave the daemon silently deaf
            logger.exception("audio supervisor crashed")
            if self._run is run:
                self._state = EngineState.FAILED
                self._last_error = "audio supervisor crashed"
        finally:
            run.first_attempt_done.set()
            if self._run is run and run.stop.is_set():
                self._state = EngineState.STOPPED

    def _report_failure(self, run: _Run, exc: Exception) -> None:
        message = str(exc) or type(exc).__name__
        if not isinstance(exc, dev.AudioDeviceError):
            message = f"{type(exc).__name__}: {message}"
        if not self._is_current(run):
            return
        self._session = None
        self._last_error = message
        self._degraded_since = None  # a later degraded session is a new episode
        self._state = (
            EngineState.FAILED
            if isinstance(exc, dev.AmbiguousDeviceError)
            else EngineState.REOPENING
        )
        if message != self._logged_error:
            logger.warning("audio device problem (%s): %s", self._state, message)
            self._logged_error = message
        else:
            logger.debug("audio device still failing: %s", message)

    def _speaker_message(self, problem: str) -> str:
        return f"speaker {self.output_device!r} unavailable: listening without playback ({problem})"

    def _report_output_lost(self, run: _Run, reason: str) -> None:
        """A running speaker failed: still healthy (the mic is reopened at once), say why."""
        if not self._is_current(run):
            return
        self._session = None  # the full session is going: no stale output or duplex figures
        self._state = EngineState.DEGRADED
        self._last_error = self._speaker_message(reason)
        if self._degraded_since is None:
            self._degraded_since = self._clock()
        logger.warning("%s", self._last_error)
        self._logged_error = self._last_error

    def _report_degraded(self, s: _Session) -> None:
        """Once per episode a warning; a changed cause at info; a retry that changes
        nothing at debug (retries go on for as long as the speaker is away)."""
        message = self._speaker_message(s.output_problem)
        self._state = EngineState.DEGRADED
        self._last_error = message
        if self._degraded_since is None:
            self._degraded_since = self._clock()
            logger.warning("%s; input %r at %d Hz", message, s.in_name, s.in_rate)
        elif message != self._logged_error:
            logger.info("speaker still unavailable: %s", s.output_problem)
        else:
            logger.debug("speaker still unavailable: %s", s.output_problem)
        self._logged_error = message

    def _report_running(self, s: _Session) -> None:
        if s.degraded:
            self._report_degraded(s)
            return
        if self._degraded_since is not None:
            logger.info(
                "speaker %r is back after %.1f s: playback restored",
                s.out_name,
                self._clock() - self._degraded_since,
            )
            self._degraded_since = None
        self._state = EngineState.RUNNING
        self._logged_error = None
        if s.duplex:
            logger.info(
                "audio running: duplex %r -> %r at %d Hz, %d ch",
                s.in_name,
                s.out_name,
                s.in_rate,
                s.in_channels,
            )
        else:
            logger.info(
                "audio running: input %r at %d Hz, output %s",
                s.in_name,
                s.in_rate,
                f"{s.out_name!r} at {s.out_rate} Hz" if s.out_name else "none",
            )

    def _watch(self, run: _Run, s: _Session) -> tuple[_Outcome, str]:
        """Block until stop, a device problem (with its description) or, while degraded,
        the next retry of the full configuration.

        A stopped duplex stream counts as the speaker's: the mic is then reopened alone,
        and if that fails it was the mic after all. A stall is always the mic's (in duplex
        one callback serves both, and a wedged mic must still stop the watchdog).
        """
        retry_at = s.started_at + self._backoff.next_delay() if s.degraded else None
        while not run.stop.wait(self.monitor_interval_s):
            for label, stream in s.streams:
                side = _Outcome.INPUT if label == "input" else _Outcome.OUTPUT
                try:
                    active = stream.is_active()
                except Exception as exc:
                    return side, f"{label} stream failed: {exc}"
                if not active:
                    return side, f"{label} stream stopped by the device (error or unplugged)"
            now = self._clock()
            if now - s.last_in > self.stall_timeout_s:
                self._input_stalled = True  # cleared by the next audio from the mic
                return (
                    _Outcome.INPUT,
                    f"no audio from input {s.in_name!r} for {self.stall_timeout_s:.1f} s",
                )
            if s.watch_output and now - s.last_out > self.stall_timeout_s:
                return (
                    _Outcome.OUTPUT,
                    f"output {s.out_name!r} stalled for {self.stall_timeout_s:.1f} s",
                )
            if retry_at is not None and now >= retry_at:
                return _Outcome.RETRY, ""
            if not s.stable and now - s.started_at >= self.stable_after_s:
                s.stable = True
                if not s.degraded:  # a stable mic says nothing about the speaker
                    self._backoff.reset()
        return _Outcome.STOP, ""

    @property
    def _wants_output(self) -> bool:
        return self.output_device is not None and (self.duplex or self._output_source is not None)

    def _open_session(self, run: _Run, output_problem: str | None = None) -> _Session:
        """The full configuration, or capture only when the output is the problem.

        ``output_problem`` set: the speaker just failed, open the mic alone. Otherwise try
        everything; if that fails, the mic alone in the same PortAudio instance: when that
        opens, the output was at fault (degraded session); when it fails too, its error
        (the mic's) is raised. A missing input raises at once, as before.
        """
        if not dev.PA_LOCK.acquire(timeout=2.0):
            raise dev.AudioDeviceError("PortAudio busy: an earlier stream is still closing")
        try:
            pa = dev.open_portaudio()
            session = _Session(pa=pa, stop=run.stop, duplex=self.duplex)
            try:
                devices = dev.query_devices(pa)
                in_dev = self._resolve(devices, self.input_device, "input")
                if self._wants_output:
                    if output_problem is None:
                        try:
                            assert self.output_device is not None
                            out_dev = self._resolve(devices, self.output_device, "output")
                            self._configure(session, in_dev, out_dev)
                            self._open_streams(session)
                            return session
                        except dev.AudioDeviceError as exc:
                            output_problem = str(exc) or type(exc).__name__
                            self._close_streams(session)
                    session = _Session(
                        pa=pa,
                        stop=run.stop,
                        duplex=False,
                        degraded=True,
                        output_problem=output_problem,
                    )
                self._configure(session, in_dev, None)
                self._open_streams(session)
            except BaseException:
                self._teardown(session)
                raise
            return session
        finally:
            dev.PA_LOCK.release()

    def _resolve(
        self, devices: list[dev.DeviceInfo], wanted: str, direction: str
    ) -> dev.DeviceInfo:
        """Resolve a configured name; a name that once matched in full stays exact."""
        direction_ = "input" if direction == "input" else "output"
        found = dev.resolve_device(
            devices, wanted, direction_, exact_only=self._exact_names.get(direction, False)
        )
        self._exact_names[direction] = dev.is_exact_match(found, wanted)
        return found

    def _configure(
        self, s: _Session, in_dev: dev.DeviceInfo, out_dev: dev.DeviceInfo | None
    ) -> None:
        s.in_name = in_dev.name
        if s.duplex:
            assert out_dev is not None
            rate, channels = dev.pick_duplex_format(s.pa, in_dev, out_dev, self.duplex_rates_hz)
            s.in_rate = s.out_rate = rate
            s.in_channels = s.out_channels = channels
            s.out_name = out_dev.name
            s.ref_rs = StreamResampler(rate, MIC_RATE_HZ)
        else:
            s.in_rate, s.in_channels = dev.pick_format(
                s.pa, [in_dev], "input", self.capture_rates_hz
            )
            if out_dev is not None and self._output_source is not None:
                s.out_rate, s.out_channels = dev.pick_format(
                    s.pa, [out_dev], "output", self.playback_rates_hz
                )
                s.out_name = out_dev.name
                s.ref_rs = StreamResampler(s.out_rate, MIC_RATE_HZ)  # for the playback guard
        s.mic_rs = StreamResampler(s.in_rate, MIC_RATE_HZ)
        if s.out_rate:
            s.out_rs = StreamResampler(SOURCE_RATE_HZ, s.out_rate)
        s.in_index = in_dev.index
        s.out_index = out_dev.index if out_dev else None

    def _frames(self, rate: int) -> int:
        return max(1, rate * self.block_ms // 1000)

    def _open_streams(self, s: _Session) -> None:
        pa = s.pa
        try:
            if s.duplex:
                stream = pa.open(
                    format=pyaudio.paInt16,
                    channels=s.in_channels,
                    rate=s.in_rate,
                    input=True,
                    output=True,
                    input_device_index=s.in_index,
                    output_device_index=s.out_index,
                    frames_per_buffer=self._frames(s.in_rate),
                    stream_callback=self._duplex_callback(s),
                    start=False,
                )
                s.streams.append(("duplex", stream))
            else:
                stream = pa.open(
                    format=pyaudio.paInt16,
                    channels=s.in_channels,
                    rate=s.in_rate,
                    input=True,
                    input_device_index=s.in_index,
                    frames_per_buffer=self._frames(s.in_rate),
                    stream_callback=self._input_callback(s),
                    start=False,
                )
                s.streams.append(("input", stream))
                if s.out_rate:
                    stream = pa.open(
                        format=pyaudio.paInt16,
                        channels=s.out_channels,
                        rate=s.out_rate,
                        output=True,
                        output_device_index=s.out_index,
                        frames_per_buffer=self._frames(s.out_rate),
                        stream_callback=self._output_callback(s),
                        start=False,
                    )
                    s.streams.append(("output", stream))
                    s.watch_output = True
            for label, stream in s.streams:
                if label in ("input", "duplex"):
                    s.input_latency_s = float(stream.get_input_latency())
                if label in ("output", "duplex"):
                    s.output_latency_s = float(stream.get_output_latency())
            s.started_at = s.last_in = s.last_out = self._clock()
            with dev.quiet_stderr():
                for _, stream in s.streams:
                    stream.start_stream()
        except (OSError, ValueError) as exc:
            raise dev.AudioDeviceError(
                f"cannot open {'duplex' if s.duplex else 'audio'} stream "
                f"(input {s.in_name!r} at {s.in_rate} Hz"
                + (f", output {s.out_name!r} at {s.out_rate} Hz" if s.out_name else "")
                + f"): {exc}"
            ) from exc

    def _close_streams(self, s: _Session) -> None:
        """Close the session's streams (PortAudio stays initialised)."""
        s.closing = True
        with dev.PA_LOCK:
            for label, stream in s.streams:
                try:
                    stream.close()  # Pa_CloseStream aborts an active stream
                except Exception as exc:
                    logger.debug("closing %s stream: %s", label, exc)
            s.streams.clear()

    def _teardown(self, s: _Session) -> None:
        """Close streams and terminate PortAudio; may block while a driver is stuck."""
        self._close_streams(s)
        with dev.PA_LOCK:
            try:
                with dev.quiet_stderr():
                    s.pa.terminate()
            except Exception as exc:
                logger.debug("Pa_Terminate: %s", exc)

    # ------------------------------------------------------------------ callbacks

    def _input_callback(self, s: _Session) -> Callable[..., tuple[bytes | None, int]]:
        def callback(in_data: bytes, frames: int, time_info: Any, status: int) -> Any:
            if s.closing or s.stop.is_set():
                return None, pyaudio.paAbort
            try:
                s.last_in = self._clock()
                if status & pyaudio.paInputOverflow:
                    self.input_overflows += 1
                assert s.mic_rs is not None
                if s.degraded:
                    self._discard_output(s, frames)
                mic16 = s.mic_rs.process(self._mic(s, in_data))
                self._deliver(s, mic16, self._take_played(s, len(mic16)))
            except Exception as exc:
                self._callback_failed(s, exc)
            return None, pyaudio.paContinue

        return callback

    def _output_callback(self, s: _Session) -> Callable[..., tuple[bytes | None, int]]:
        def callback(in_data: bytes | None, frames: int, time_info: Any, status: int) -> Any:
            if s.closing or s.stop.is_set():
                return bytes(frames * 2 * s.out_channels), pyaudio.paAbort
            try:
                s.last_out = self._clock()
                if status & pyaudio.paOutputUnderflow:
                    self.output_underflows += 1
                out = self._render(s, frames)
                self._keep_played(s, out)
            except Exception as exc:
                self._callback_failed(s, exc)
                out = np.zeros(frames, dtype=np.int16)
            return self._device_bytes(out, s.out_channels), pyaudio.paContinue

        return callback

    def _keep_played(self, s: _Session, out: np.ndarray) -> None:
        """Separate streams: queue what was played (at 16 kHz) for the mic side's ``ref``."""
        if s.ref_rs is None:
            return
        played = s.ref_rs.process(out)
        with s.played_lock:
            joined = np.concatenate((s.played16, played)) if len(s.played16) else played
            s.played16 = joined[-_PLAYED_HANDOFF_SAMPLES:]  # bounded: oldest dropped

    def _take_played(self, s: _Session, n: int) -> np.ndarray | None:
        """The next ``n`` played samples for the mic side, zero-padded; None: no speaker
        configured; zeros while it is missing (nothing plays, nothing echoes)."""
        if s.degraded:
            return np.zeros(n, dtype=np.int16)
        if s.ref_rs is None:
            return None
        with s.played_lock:
            ref, s.played16 = s.played16[:n], s.played16[n:]
        if len(ref) < n:
            ref = np.concatenate((ref, np.zeros(n - len(ref), dtype=np.int16)))
        return ref

    def _duplex_callback(self, s: _Session) -> Callable[..., tuple[bytes | None, int]]:
        def callback(in_data: bytes, frames: int, time_info: Any, status: int) -> Any:
            if s.closing or s.stop.is_set():
                return bytes(frames * 2 * s.out_channels), pyaudio.paAbort
            try:
                s.last_in = s.last_out = self._clock()
                if status & pyaudio.paInputOverflow:
                    self.input_overflows += 1
                if status & pyaudio.paOutputUnderflow:
                    self.output_underflows += 1
                out = self._render(s, frames)
                assert s.mic_rs is not None and s.ref_rs is not None
                mic16 = s.mic_rs.process(self._mic(s, in_data))
                ref16 = s.ref_rs.process(out)
                self._deliver(s, mic16, ref16)
            except Exception as exc:
                self._callback_failed(s, exc)
                out = np.zeros(frames, dtype=np.int16)
            return self._device_bytes(out, s.out_channels), pyaudio.paContinue

        return callback

    def _callback_failed(self, s: _Session, exc: Exception) -> None:
        self.callback_errors += 1
        if self.callback_errors == 1:  # once; the audio thread must not flood the log
            logger.error("audio callback failed (block dropped): %r", exc)

    @staticmethod
    def _mic(s: _Session, data: bytes) -> np.ndarray:
        x = np.frombuffer(data, dtype="<i2")
        return x[:: s.in_channels] if s.in_channels > 1 else x

    @staticmethod
    def _device_bytes(out: np.ndarray, channels: int) -> bytes:
        if channels > 1:
            out = np.repeat(out, channels)
        return out.astype("<i2", copy=False).tobytes()

    def _deliver(self, s: _Session, mic16: np.ndarray, ref16: np.ndarray | None) -> None:
        """Cut fixed 16 kHz blocks (mic and reference in lockstep) and hand them on."""
        if self._input_stalled and len(mic16):
            self._input_stalled = False
        s.mic_acc = np.concatenate((s.mic_acc, mic16)) if len(s.mic_acc) else mic16
        if ref16 is not None:
            s.ref_acc = np.concatenate((s.ref_acc, ref16)) if len(s.ref_acc) else ref16
            ready = min(len(s.mic_acc), len(s.ref_acc))
        else:
            ready = len(s.mic_acc)
        n = self.block_samples
        while ready >= n:
            mic = s.mic_acc[:n].copy()
            s.mic_acc = s.mic_acc[n:]
            ref = None
            if ref16 is not None:
                ref = s.ref_acc[:n].copy()
                s.ref_acc = s.ref_acc[n:]
            ready -= n
            pos = self.captured_samples
            self.captured_samples = pos + n
            self._emit(mic, ref, pos)

    def _emit(self, mic: np.ndarray, ref: np.ndarray | None, pos: int) -> None:
        if self._on_block is not None:
            try:
                self._on_block(mic, ref, pos)
            except Exception as exc:
                self.callback_errors += 1
                if self.callback_errors == 1:
                    logger.error("on_block failed (block dropped): %r", exc)
            return
        block = CaptureBlock(mic, ref, pos)
        try:
            self.blocks.put_nowait(block)
        except queue.Full:
            with contextlib.suppress(queue.Empty):
                self.blocks.get_nowait()
            self.dropped_blocks += 1
            with contextlib.suppress(queue.Full):
                self.blocks.put_nowait(block)

    def _pull(self, n: int) -> np.ndarray:
        """``n`` samples at 24 kHz from the source; silence if it fails."""
        self.pulled_samples_24k += n
        if self._output_source is None:
            return np.zeros(n, dtype=np.int16)
        try:
            x = np.asarray(self._output_source(n)).reshape(-1)
            if x.dtype != np.int16:
                x = x.astype(np.int16)
        except Exception as exc:
            self.source_errors += 1
            if self.source_errors == 1:
                logger.error("output_source failed (silence played): %r", exc)
            return np.zeros(n, dtype=np.int16)
        if len(x) != n:
            self.source_errors += 1
            # Pad a short read with silence (never repeat audio); cut a long one.
            x = np.concatenate((x[:n], np.zeros(max(0, n - len(x)), dtype=np.int16)))
        return x

    def _discard_output(self, s: _Session, frames: int) -> None:
        """Degraded: pull what a speaker would have played during these mic frames, and
        drop it. The jitter buffer then drains at real-time pace, so a reply "plays" to its
        end (the daemon sees it drained) instead of waiting, possibly for minutes, to burst
        out when the speaker returns; cues are consumed the same way."""
        s.discard_credit += frames * SOURCE_RATE_HZ / s.in_rate
        n = int(s.discard_credit)
        if n > 0:
            s.discard_credit -= n
            self._pull(n)
            self.discarded_samples_24k += n

    def _render(self, s: _Session, frames: int) -> np.ndarray:
        """Exactly ``frames`` device-rate samples: pulled at 24 kHz, resampled.

        A barge-in does not reset the resampler or drop its leftover samples: the jitter
        buffer's fade-out then flows through the same filter state, so the cut is as smooth
        at 48 kHz as at 24 kHz. What that keeps is under 1 ms of leftover plus the filter's
        ~2 ms delay (measured in tests/test_audio_engine.py).
        """
        assert s.out_rs is not None or s.out_rate == 0
        if s.out_rs is None:  # duplex without a source rate (cannot happen) or no output
            return np.zeros(frames, dtype=np.int16)
        ring = s.out_ring
        pulls = 0
        while len(ring) < frames and pulls < _MAX_RENDER_PULLS:
            need = math.ceil((frames - len(ring)) * SOURCE_RATE_HZ / s.out_rate)
            y = s.out_rs.process(self._pull(need))
            ring = np.concatenate((ring, y)) if len(ring) else y
            pulls += 1
        if len(ring) < frames:  # resampler warm-up: pad the very first block
            ring = np.concatenate((ring, np.zeros(frames - len(ring), dtype=np.int16)))
        out, s.out_ring = ring[:frames], ring[frames:]
        self.played_device_samples += frames
        self._played_24k += frames * SOURCE_RATE_HZ / s.out_rate
        return out

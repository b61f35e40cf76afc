"""The sound card's supervisor thread: open, watch, reopen, degrade to capture only, restore.

It owns every PortAudio call (initialise, open, start, close, terminate); the streams it
opens are :class:`edge_agent.audio.streams.Session` objects, replaced wholesale on reopen.

Device loss: a stream that stops on its own (``is_active()`` false: ALSA error, unplugged
device), a callback that has not run for ``stall_timeout_s`` (a wedged device), or a failed
open are logged once, the state goes to ``reopening`` with ``last_error`` set, and the
supervisor closes everything, calls ``Pa_Terminate()`` (PortAudio only sees a re-plugged
device after a full terminate + initialise) and tries again after the next reopen delay:
:func:`edge_agent.core.backoff.capped_exponential` from ``reopen_initial_delay_s`` doubling
to ``reopen_max_delay_s``, without jitter (one device, one client: nothing to spread). The
attempt count resets once a reopened device has run for ``stable_after_s``.

A lost *speaker* must not make the device deaf (a USB speaker unplugged, an HDMI TV switched
off). When the mic opens but the output is missing or fails to open, in duplex and in
separate-stream mode alike, the supervisor runs a **degraded** capture-only session (state
``degraded``, still healthy, ``last_error`` says why; see the streams module for what the
callbacks do then). The same happens when a running output stream stops or stalls (or the
duplex stream stops: the mic is then reopened alone first, and if that fails too it is the
mic, and everything reopens as above). While degraded the full configuration is retried
after the next reopen delay (a brief teardown and reopen: the gap in capture is one stream
open), and the attempt count is not reset by a stable degraded session, so retries settle
at ``reopen_max_delay_s``. A stalled or missing input is handled the same in every mode.

:meth:`DeviceSupervisor.stop` returns within ``stop_timeout_s`` even if a close is stuck
inside the driver (``Pa_CloseStream`` waits for the callback thread, which PortAudio cannot
cancel while it is inside ALSA); the old run then finishes closing in the background and
only ever touches its own run. PortAudio's device list only refreshes when no other PyAudio
instance in the process is alive, so the engine should be the only long-lived PyAudio user.
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass, field
from enum import StrEnum

from edge_agent.audio import devices as dev
from edge_agent.audio.streams import Session, StreamSetup
from edge_agent.core.backoff import capped_exponential

logger = logging.getLogger(__name__)

REOPEN_MULTIPLIER = 2.0


class EngineState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    DEGRADED = "degraded"  # capture runs, the speaker is missing; retrying it with backoff
    REOPENING = "reopening"  # a device failed or is missing; retrying with backoff
    # A retry cannot help until config or hardware change (still retried): an ambiguous
    # input name. An ambiguous output name degrades instead (the mic must keep listening).
    FAILED = "failed"


class _Outcome(StrEnum):
    """Why :meth:`DeviceSupervisor._watch` returned."""

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


class DeviceSupervisor:
    """Keeps the configured devices open on its own thread; reports state and last error."""

    _run_ids = itertools.count(1)

    def __init__(
        self,
        setup: StreamSetup,
        *,
        input_device: str,
        output_device: str | None,
        duplex: bool,
        reopen_initial_delay_s: float,
        reopen_max_delay_s: float,
        stall_timeout_s: float,
        stable_after_s: float,
        stop_timeout_s: float,
        start_timeout_s: float,
        monitor_interval_s: float,
    ) -> None:
        if reopen_initial_delay_s <= 0 or reopen_max_delay_s < reopen_initial_delay_s:
            raise ValueError("bad reopen delays")
        self.setup = setup
        self.input_device = input_device
        self.output_device = output_device
        self.duplex = duplex
        self.reopen_initial_delay_s = reopen_initial_delay_s
        self.reopen_max_delay_s = reopen_max_delay_s
        self.stall_timeout_s = stall_timeout_s
        self.stable_after_s = stable_after_s
        self.stop_timeout_s = stop_timeout_s
        self.start_timeout_s = start_timeout_s
        self.monitor_interval_s = monitor_interval_s

        self.state = EngineState.STOPPED
        self.last_error: str | None = None  # kept after recovery, for status displays
        self.session: Session | None = None  # the open one, if any
        self.reopen_count = 0
        self.output_retries = 0  # degraded: attempts to get the speaker back
        self._reopen_attempt = 0  # failures since the last stable session
        self._logged_error: str | None = None
        self._run: _Run | None = None
        self._exact_names: dict[str, bool] = {}  # direction -> configured name matched in full
        self._degraded_since: float | None = None  # start of the current degraded episode

    # ------------------------------------------------------------------ start / stop

    def start(self) -> EngineState:
        """Start the supervisor thread; wait for its first attempt (or start_timeout_s)."""
        run = self._run
        if run is not None and not run.stop.is_set():
            return self.state
        run = _Run(next(self._run_ids))
        run.thread = threading.Thread(
            target=self._supervise, args=(run,), name="audio-engine", daemon=True
        )
        self._run = run
        self.state = EngineState.STARTING
        run.thread.start()
        run.first_attempt_done.wait(self.start_timeout_s)
        return self.state

    def stop(self) -> None:
        """Close everything; idempotent; returns within ``stop_timeout_s``."""
        run = self._run
        if run is None or run.stop.is_set():
            self.state = EngineState.STOPPED
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
        self.session = None
        self.state = EngineState.STOPPED

    # ------------------------------------------------------------------ the thread

    def _next_delay(self) -> float:
        delay = capped_exponential(
            self._reopen_attempt,
            self.reopen_initial_delay_s,
            self.reopen_max_delay_s,
            REOPEN_MULTIPLIER,
        )
        self._reopen_attempt += 1
        return delay

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
                    if run.stop.wait(self._next_delay()):
                        break
                    continue
                output_problem = None
                if not self._is_current(run):
                    session.teardown()
                    break
                self.session = session
                self._report_running(session)
                run.first_attempt_done.set()
                outcome, reason = self._watch(run, session)
                if outcome is _Outcome.STOP or not self._is_current(run):
                    session.teardown()
                    break
                if outcome is _Outcome.RETRY:  # planned: state stays degraded meanwhile
                    self.output_retries += 1
                    session.teardown()
                    continue
                self.reopen_count += 1
                if outcome is _Outcome.OUTPUT:
                    self._report_output_lost(run, reason)  # before a teardown that may hang
                    session.teardown()
                    output_problem = reason
                    continue
                self._report_failure(run, dev.AudioDeviceError(reason))
                session.teardown()
                if run.stop.wait(self._next_delay()):
                    break
        except Exception:  # a bug here must not leave the daemon silently deaf
            logger.exception("audio supervisor crashed")
            if self._run is run:
                self.state = EngineState.FAILED
                self.last_error = "audio supervisor crashed"
        finally:
            run.first_attempt_done.set()
            if self._run is run and run.stop.is_set():
                self.state = EngineState.STOPPED

    def _watch(self, run: _Run, s: Session) -> tuple[_Outcome, str]:
        """Block until stop, a device problem (with its description) or, while degraded,
        the next retry of the full configuration.

        A stopped duplex stream counts as the speaker's: the mic is then reopened alone,
        and if that fails it was the mic after all. A stall is always the mic's (in duplex
        one callback serves both, and a wedged mic must still stop the watchdog).
        """
        clock = self.setup.clock
        retry_at = s.started_at + self._next_delay() if s.degraded else None
        while not run.stop.wait(self.monitor_interval_s):
            for label, stream in s.streams:
                side = _Outcome.INPUT if label == "input" else _Outcome.OUTPUT
                try:
                    active = stream.is_active()
                except Exception as exc:
                    return side, f"{label} stream failed: {exc}"
                if not active:
                    return side, f"{label} stream stopped by the device (error or unplugged)"
            now = clock()
            if now - s.last_in > self.stall_timeout_s:
                self.setup.counters.input_stalled = True  # cleared by the mic's next audio
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
                    self._reopen_attempt = 0
        return _Outcome.STOP, ""

    # ------------------------------------------------------------------ opening

    @property
    def _wants_output(self) -> bool:
        return self.output_device is not None and (
            self.duplex or self.setup.output_source is not None
        )

    def _open_session(self, run: _Run, output_problem: str | None = None) -> Session:
        """The full configuration, or capture only when the output is the problem.

        ``output_problem`` set: the speaker just failed, open the mic alone. Otherwise try
        everything; if that fails, the mic alone in the same PortAudio instance: when that
        opens, the output was at fault (degraded session); when it fails too, its error
        (the mic's) is raised. A missing input raises at once.
        """
        if not dev.PA_LOCK.acquire(timeout=2.0):
            raise dev.AudioDeviceError("PortAudio busy: an earlier stream is still closing")
        try:
            pa = dev.open_portaudio()
            session = Session(pa, self.setup, run.stop, duplex=self.duplex)
            try:
                devices = dev.query_devices(pa)
                in_dev = self._resolve(devices, self.input_device, "input")
                if self._wants_output:
                    if output_problem is None:
                        try:
                            assert self.output_device is not None
                            out_dev = self._resolve(devices, self.output_device, "output")
                            session.configure(in_dev, out_dev)
                            session.open()
                            return session
                        except dev.AudioDeviceError as exc:
                            output_problem = str(exc) or type(exc).__name__
                            session.close_streams()
                    session = Session(
                        pa,
                        self.setup,
                        run.stop,
                        duplex=False,
                        degraded=True,
                        output_problem=output_problem,
                    )
                session.configure(in_dev, None)
                session.open()
            except BaseException:
                session.teardown()
                raise
            return session
        finally:
            dev.PA_LOCK.release()

    def _resolve(
        self, devices: list[dev.DeviceInfo], wanted: str, direction: dev.Direction
    ) -> dev.DeviceInfo:
        """Resolve a configured name; a name that once matched in full stays exact."""
        found = dev.resolve_device(
            devices, wanted, direction, exact_only=self._exact_names.get(direction, False)
        )
        self._exact_names[direction] = dev.is_exact_match(found, wanted)
        return found

    # ------------------------------------------------------------------ reporting

    def _report_failure(self, run: _Run, exc: Exception) -> None:
        message = str(exc) or type(exc).__name__
        if not isinstance(exc, dev.AudioDeviceError):
            message = f"{type(exc).__name__}: {message}"
        if not self._is_current(run):
            return
        self.session = None
        self.last_error = message
        self._degraded_since = None  # a later degraded session is a new episode
        self.state = (
            EngineState.FAILED
            if isinstance(exc, dev.AmbiguousDeviceError)
            else EngineState.REOPENING
        )
        if message != self._logged_error:
            logger.warning("audio device problem (%s): %s", self.state, message)
            self._logged_error = message
        else:
            logger.debug("audio device still failing: %s", message)

    def _speaker_message(self, problem: str) -> str:
        return f"speaker {self.output_device!r} unavailable: listening without playback ({problem})"

    def _report_output_lost(self, run: _Run, reason: str) -> None:
        """A running speaker failed: still healthy (the mic is reopened at once), say why."""
        if not self._is_current(run):
            return
        self.session = None  # the full session is going: no stale output or duplex figures
        self.state = EngineState.DEGRADED
        self.last_error = self._speaker_message(reason)
        if self._degraded_since is None:
            self._degraded_since = self.setup.clock()
        logger.warning("%s", self.last_error)
        self._logged_error = self.last_error

    def _report_degraded(self, s: Session) -> None:
        """Once per episode a warning; a changed cause at info; a retry that changes
        nothing at debug (retries go on for as long as the speaker is away)."""
        message = self._speaker_message(s.output_problem)
        self.state = EngineState.DEGRADED
        self.last_error = message
        if self._degraded_since is None:
            self._degraded_since = self.setup.clock()
            logger.warning("%s; input %r at %d Hz", message, s.in_name, s.in_rate)
        elif message != self._logged_error:
            logger.info("speaker still unavailable: %s", s.output_problem)
        else:
            logger.debug("speaker still unavailable: %s", s.output_problem)
        self._logged_error = message

    def _report_running(self, s: Session) -> None:
        if s.degraded:
            self._report_degraded(s)
            return
        if self._degraded_since is not None:
            logger.info(
                "speaker %r is back after %.1f s: playback restored",
                s.out_name,
                self.setup.clock() - self._degraded_since,
            )
            self._degraded_since = None
        self.state = EngineState.RUNNING
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

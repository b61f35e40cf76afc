"""The daemon: wires the pure core to the devices and the Live session.

Data flow::

    sound card thread --on_block--> bounded queue --> ears worker thread
        (AEC, wake word, VAD gate, barge-in) --call_soon_threadsafe--> event loop
    event loop: ConversationMachine.handle(event) -> actions -> session / ears / LEDs / cues
    LiveSession events: model audio -> JitterBuffer <--pull-- sound card thread

Threads exist only at the edges (sound card, ears worker, gpiozero); everything they
report becomes an event on the asyncio loop, where the state machine decides. Nothing on
the loop blocks: model loading, file writes and device opens run in worker threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import importlib
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.app.checks import model_problems
from edge_agent.app.control import ControlServer
from edge_agent.audio.capture import CapturePipeline
from edge_agent.config import Config, ConfigError, load_config, resolve_path
from edge_agent.core import events as ev
from edge_agent.core import state as st
from edge_agent.core.cues import CueMixer
from edge_agent.core.jitter import JitterBuffer
from edge_agent.core.policy import BargeInRules
from edge_agent.core.watchdog import WatchdogGate
from edge_agent.logsetup import setup_logging
from edge_agent.secrets import ApiKeyMissing, redact, resolve_api_key

log = logging.getLogger(__name__)

STOP_DEADLINE_S = 1.5  # SIGTERM to exit must stay under 2 s
MUTE_FILE = "muted"


class ApiKeyProvider:
    """Looks the key up on every connection attempt, so a fixed key needs no restart."""

    def __init__(self, api_key_file: str) -> None:
        self.api_key_file = api_key_file
        self._last_problem: str | None = None

    def __call__(self) -> str | None:
        try:
            key = resolve_api_key(self.api_key_file)
        except ApiKeyMissing as exc:
            if str(exc) != self._last_problem:  # once, not at every retry
                log.error("%s", exc)
                self._last_problem = str(exc)
            return None
        if self._last_problem is not None:
            log.info("API key found (%s)", key.source)
            self._last_problem = None
        return key.value


def _ears_config(cfg: Config) -> Any:
    from edge_agent.audio.ears import EarsConfig

    models = tuple(
        str(resolve_path(cfg, m)) if m.endswith((".tflite", ".onnx")) or "/" in m else m
        for m in cfg.wake_word.models
    )
    ww = dataclasses.replace(cfg.wake_word, models=models)
    return EarsConfig.from_settings(dataclasses.replace(cfg, wake_word=ww))


class Daemon:
    """One running appliance. `run()` returns the process exit code."""

    def __init__(
        self,
        cfg: Config,
        config_path: Path,
        *,
        notifier: Any | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        from edge_agent.device.systemd import SystemdNotifier

        self.cfg = cfg
        self.config_path = config_path
        self.environ = dict(os.environ if environ is None else environ)
        self.notifier = notifier or SystemdNotifier()
        self.state_dir = Path(cfg.daemon.state_dir)
        self.jitter = self._make_jitter(cfg)
        self.cues = CueMixer(cue_volume=cfg.audio.cue_volume_percent / 100)
        self.machine: st.ConversationMachine | None = None
        self.ears: Any = None
        self.engine: Any = None
        self.session: Any = None
        self.panel: Any = None
        self.control: ControlServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.capture = CapturePipeline(
            None, self._ear_events_to_loop, max_blocks=cfg.audio.capture_queue_blocks
        )
        self._led_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="leds")
        self._reply_playing = False
        self._drain_reported = True
        self._first_chunk_at: float | None = None
        self._transcript_in: list[str] = []
        self._transcript_out: list[str] = []
        self._last_error: str | None = None
        self._audio_ok = True
        self._speaker_missing = False  # engine degraded: listening without playback
        self._reload_lock = asyncio.Lock()
        self._exit_code = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    @staticmethod
    def _make_jitter(cfg: Config) -> JitterBuffer:
        return JitterBuffer(
            prefill_ms=cfg.playback.prefill_ms,
            max_ms=cfg.playback.max_buffer_ms,
            fade_ms=cfg.playback.fade_ms,
            gain=cfg.audio.volume_percent / 100,
        )

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self._request_stop, sig)
        self._loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        self.notifier.status("starting: loading models")
        starting = asyncio.create_task(self._start_components(), name="startup")
        stop_requested = asyncio.create_task(self._stop.wait(), name="stop-wait")
        await asyncio.wait({starting, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
        stop_requested.cancel()
        if self._stop.is_set():  # SIGTERM while models load: stop now, never send READY
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            self.notifier.stopping()
            await self._shutdown()
            log.info("edge-agent stopped during startup")
            return self._exit_code
        try:
            starting.result()
        except StartupError as exc:
            log.error("cannot start: %s", exc)
            self.notifier.status(f"failed: {exc}")
            await self._shutdown()
            return 2
        self.notifier.ready()
        self._update_status()
        log.info("edge-agent ready (state %s)", self.machine.state if self.machine else "?")
        self._spawn(self._watchdog_loop(), "watchdog")
        self._spawn(self._device_monitor(), "device-monitor")
        await self._stop.wait()
        self.notifier.stopping()
        await self._shutdown()
        log.info("edge-agent stopped")
        return self._exit_code

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        """A background task that dies says so (a silent dead watchdog would be a mystery)."""
        self._tasks.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            log.error("task %s failed: %s", task.get_name(), redact(repr(exc)))

    def _request_stop(self, sig: int) -> None:
        log.info("%s received: stopping", signal.Signals(sig).name)
        self._stop.set()

    async def _start_components(self) -> None:
        """Everything READY promises: wake word loaded, audio running, session started.

        The wake model check (a child process per model; this thread only waits) runs
        while this process imports the Live SDK (the slowest import, its pydantic types),
        so the two overlap on separate cores.
        """
        from edge_agent.audio.ears import Ears

        cfg = self.cfg
        await asyncio.to_thread(self.state_dir.mkdir, parents=True, exist_ok=True)
        muted = await asyncio.to_thread(self._load_mute)
        checking = _in_daemon_thread(functools.partial(model_problems, cfg, builtins=True))
        try:
            live = await _in_daemon_thread(importlib.import_module, "edge_agent.live.session")
        except BaseException:  # incl. cancellation (SIGTERM): do not wait for the check
            checking.cancel()
            raise
        problems = await checking
        if problems:
            raise StartupError("; ".join(problems))
        try:
            self.ears = await _in_daemon_thread(Ears.create, _ears_config(cfg))
        except Exception as exc:
            raise StartupError(f"wake word / audio models: {redact(str(exc))}") from exc
        self.machine = st.ConversationMachine(
            cfg.conversation, barge_in=BargeInRules.from_config(cfg), muted_at_start=muted
        )
        self.panel = self._open_panel(cfg)
        self.session = live.LiveSession(
            cfg.gemini,
            cfg.reconnect,
            ApiKeyProvider(cfg.gemini.api_key_file),
            self.state_dir,
            self._on_live_event,
        )
        self.session.start()
        try:
            key = await asyncio.to_thread(resolve_api_key, cfg.gemini.api_key_file)
            log.info("Gemini API key from %s", key.source)
        except ApiKeyMissing as exc:
            self._last_error = str(exc)
            log.error("%s; the device will wake but cannot answer until a key is added", exc)
        self._run_actions(self.machine.initial_actions())
        self._sync_ears()
        self.capture.set_ears(self.ears)
        self.capture.start()
        self.engine = self._make_engine(cfg)
        await _in_daemon_thread(self.engine.start)
        self.control = ControlServer(self.state_dir / "control.sock", self._on_control)
        try:
            await self.control.start()
        except OSError as exc:
            log.warning("control socket unavailable: %s", exc)
            self.control = None

    def _open_panel(self, cfg: Config) -> Any:
        """Button and LEDs; gpiozero's threads hand button events to the event loop."""
        from edge_agent.device.gpio import open_panel

        loop = asyncio.get_running_loop()
        return open_panel(
            cfg.gpio, emit=lambda event: loop.call_soon_threadsafe(self.dispatch, event)
        )

    def _make_engine(self, cfg: Config) -> Any:
        from edge_agent.audio.engine import AudioEngine

        return AudioEngine(
            input_device=cfg.audio.input_device,
            output_device=cfg.audio.output_device,
            capture_rate_hz=cfg.audio.capture_rate_hz,
            playback_rate_hz=cfg.audio.playback_rate_hz,
            duplex=cfg.echo.enabled,
            duplex_rate_hz=cfg.audio.duplex_rate_hz,
            block_ms=cfg.audio.block_ms,
            output_source=self._output_source,
            on_block=self.capture.on_block,
            reopen_max_delay_s=cfg.audio.reopen_max_delay_s,
        )

    async def _shutdown(self) -> None:
        """Stop everything within STOP_DEADLINE_S; LEDs end dark."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        steps: list[Any] = []
        if self.session is not None:
            steps.append(self.session.stop())
        if self.control is not None:
            steps.append(self.control.stop())
        if self.engine is not None:
            steps.append(asyncio.to_thread(self.engine.stop))
        if steps:
            try:
                done = await asyncio.wait_for(
                    asyncio.gather(*steps, return_exceptions=True), STOP_DEADLINE_S
                )
            except TimeoutError:
                log.warning("stopping took over %.1f s: exiting anyway", STOP_DEADLINE_S)
                done = []
            for result in done:
                if isinstance(result, Exception):
                    log.warning("while stopping: %s", redact(str(result)))
        self.capture.stop()  # bounded join
        self._led_executor.shutdown(wait=True, cancel_futures=True)
        if self.panel is not None:
            self.panel.close()

    # --------------------------------------------------------------- device edge

    def _output_source(self, n: int) -> np.ndarray:
        """Sound card thread: reply audio plus cues; notices when the reply has drained."""
        block = self.cues.mix_into(self.jitter.pull(n))
        if self._first_chunk_at is not None and self.jitter.last_pull_was_audio:
            arrived, self._first_chunk_at = self._first_chunk_at, None
            written = time.monotonic()
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._log_first_audio, arrived, written)
        if self._reply_playing and self.jitter.is_idle and not self._drain_reported:
            self._drain_reported = True
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._on_drained)
        return block

    def _ear_events_to_loop(self, events: list[ev.EarEvent]) -> None:
        """Ears worker thread (CapturePipeline): hand the events to the event loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_ear_events, events)

    # ----------------------------------------------------------------- events in

    def _on_ear_events(self, events: list[ev.EarEvent]) -> None:
        """Ears events are the machine's own vocabulary; only uplink audio goes elsewhere."""
        for event in events:
            if isinstance(event, ev.UplinkAudio):
                if self.machine is not None and self.machine.uplink_active:
                    self.session.send_audio(event.pcm)
            else:
                self.dispatch(event)

    def _on_live_event(self, event: ev.LiveEvent) -> None:
        """Session events go to the machine as they are; the daemon keeps the bookkeeping
        of playback, transcripts and status that the machine has no say in."""
        machine = self.machine
        if machine is None:
            return
        match event:
            case ev.ModelAudioReceived(pcm24k=pcm):
                if not machine.accepting_model_audio:
                    return  # the rest of a reply the user barged into
                if not self._reply_playing:
                    self._first_chunk_at = time.monotonic()
                self.jitter.push(pcm)
                self._reply_playing = True
                self._drain_reported = False
            case ev.InputTranscript(text=text):
                _append_bounded(self._transcript_in, text)
                return
            case ev.OutputTranscript(text=text):
                if machine.accepting_model_audio:  # else: the words of a dropped reply
                    _append_bounded(self._transcript_out, text)
                return
            case ev.ToolCalled(name=name, args=args):
                log.info("tool call: %s(%s)", name, args)
                return
            case ev.TurnCompleted():
                self._log_transcripts()
                self.jitter.mark_turn_complete()
                if self.jitter.is_idle:
                    self._drain_reported = True
            case ev.ServerInterrupted():
                log.info("server: interrupted")
            case ev.SessionReady():
                self._last_error = None
            case ev.GoAwayReceived(time_left_s=left):
                log.info("server: goAway, %.0f s left: handing over", left)
            case ev.SessionLost(reason=reason):
                self._last_error = reason
        self.dispatch(event)
        if isinstance(event, ev.TurnCompleted) and self.jitter.is_idle:
            self.dispatch(ev.PlaybackDrained())
        if isinstance(event, ev.SessionReady | ev.SessionLost | ev.SessionClosed):
            self._update_status()  # not per audio chunk: STATUS= is a datagram each time

    def _log_first_audio(self, arrived: float, written: float) -> None:
        log.info(
            "reply audio: first chunk arrived t=%.6f, first sample written t=%.6f (%.1f ms)",
            arrived,
            written,
            1000 * (written - arrived),
        )

    def _on_drained(self) -> None:
        self._reply_playing = False
        self.dispatch(ev.PlaybackDrained())

    def _log_transcripts(self) -> None:
        if self._transcript_in:
            log.info("you said: %s", "".join(self._transcript_in).strip())
        if self._transcript_out:
            log.info("gemini said: %s", "".join(self._transcript_out).strip())
        self._transcript_in.clear()
        self._transcript_out.clear()

    # ------------------------------------------------------------ state machine

    def dispatch(self, event: Any) -> None:
        """Feed one event to the state machine and carry out its actions (loop thread)."""
        machine = self.machine
        if machine is None or self._stop.is_set():
            return
        actions = machine.handle(event, time.monotonic())
        for t in machine.last_transitions:
            log.info("state %s -> %s: %s", t.from_state, t.to_state, t.reason)
        self._run_actions(actions)
        self._sync_ears()
        if machine.last_transitions:
            self._update_status()

    def _run_actions(self, actions: list[Any]) -> None:
        for action in actions:
            try:
                self._run_action(action)
            except Exception:
                log.exception("action %s failed", type(action).__name__)

    def _run_action(self, action: Any) -> None:
        match action:
            case st.OpenSession():
                self.session.open()
            case st.CloseSession():
                self.session.close()
            case st.SendActivityStart():
                self.session.activity_start()
            case st.SendActivityEnd():
                self.session.activity_end()
            case st.FlushPlayback():
                discarded = self.jitter.clear()
                written = self.engine.played_device_samples if self.engine is not None else 0
                self._reply_playing = False
                self._drain_reported = True
                log.info(
                    "playback flushed at output sample %d, t=%.6f (%d reply samples dropped)",
                    written,
                    time.monotonic(),
                    discarded,
                )
            case st.InterruptSession():
                self.session.interrupt()
            case st.ShowLeds(pattern=pattern):
                # gpiozero may join a blink thread: off the loop, in order.
                self._led_executor.submit(self.panel.show, pattern)
            case st.PlayCue(name=name):
                self.cues.play(name)
            case st.SetTimer(name=name, at=at):
                self._set_timer(str(name), at)
            case st.CancelTimer(name=name):
                handle = self._timers.pop(str(name), None)
                if handle is not None:
                    handle.cancel()
            case st.PersistMute(muted=muted):
                self._spawn(asyncio.to_thread(self._save_mute, muted), "persist-mute")
            case st.SetMicMuted(muted=muted):
                self.capture.muted = muted
            case _:
                log.debug("unhandled action %r", action)

    def _sync_ears(self) -> None:
        """Hand the machine's policy to the ears (after every event, and to new ears
        after a reload); they carry it out from the next block on."""
        if self.machine is not None and self.ears is not None:
            self.ears.apply(self.machine.policy)

    def _set_timer(self, name: str, at: float) -> None:
        old = self._timers.pop(name, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, at - time.monotonic())
        self._timers[name] = loop.call_later(delay, self._fire_timer, name)

    def _fire_timer(self, name: str) -> None:
        self._timers.pop(name, None)
        self.dispatch(ev.TimerFired(name))

    # --------------------------------------------------------------- persistence

    def _load_mute(self) -> bool:
        try:
            return (self.state_dir / MUTE_FILE).read_text().strip() == "1"
        except OSError:
            return False

    def _save_mute(self, muted: bool) -> None:
        path = self.state_dir / MUTE_FILE
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text("1\n" if muted else "0\n")
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot remember mute state in %s: %s", path, exc)

    # ------------------------------------------------------ watchdog and status

    async def _watchdog_loop(self) -> None:
        """WATCHDOG=1 only while the mic delivers and this loop is responsive.

        The ping runs on the event loop itself, so a stuck loop stops the pings. A stream
        that is open but delivers nothing (a frozen mic) stops them too, and systemd
        restarts the service. A device the engine knows is gone (and is reopening with
        backoff) does not: restarting would not bring it back, only hit the start limit.
        """
        from edge_agent.device.systemd import watchdog_interval_s

        interval = watchdog_interval_s(self.environ)
        if interval is None:
            return
        gate = WatchdogGate(stall_s=self.cfg.daemon.watchdog_stall_s)
        period = max(0.05, interval / 2)
        refused = False
        while True:
            await asyncio.sleep(period)
            gate.stall_s = self.cfg.daemon.watchdog_stall_s  # a reload may change it
            now = time.monotonic()
            engine = self.engine
            captured = engine.captured_samples if engine is not None else 0
            expected = engine is not None and (engine.healthy or _stalled(engine))
            if gate.should_ping(now, captured, now, capture_expected=expected):
                self.notifier.watchdog()
                if refused:
                    log.info("watchdog fed again")
                refused = False
            elif not refused:
                refused = True
                log.error("watchdog not fed: %s", gate.refusal)

    async def _device_monitor(self) -> None:
        """Turns the engine's device state into AudioDeviceLost/Restored events."""
        while True:
            await asyncio.sleep(0.5)
            engine = self.engine
            if engine is None:
                continue
            speaker_missing = engine.output_missing
            if speaker_missing != self._speaker_missing:  # the mic still runs: status only
                self._speaker_missing = speaker_missing
                self._update_status()
            ok = engine.healthy
            if ok != self._audio_ok:
                self._audio_ok = ok
                if ok:
                    log.info("audio device back")
                    self.dispatch(ev.AudioDeviceRestored())
                else:
                    reason = engine.last_error or "audio device error"
                    self._last_error = reason
                    self.dispatch(ev.AudioDeviceLost(reason))

    def _update_status(self) -> None:
        machine = self.machine
        parts = [f"state: {machine.state if machine else 'starting'}"]
        if self.session is not None:
            status = self.session.status()
            parts.append(f"session: {status.state}")
            if status.reconnect_count:
                parts.append(f"reconnects: {status.reconnect_count}")
            if status.last_error:
                parts.append(f"last error: {status.last_error}")
        elif self._last_error:
            parts.append(f"last error: {self._last_error}")
        if self._speaker_missing and self.engine is not None:
            parts.append(f"no speaker: {self.engine.last_error or 'output device missing'}")
        self.notifier.status(redact("; ".join(parts)))

    # ------------------------------------------------------------------- reload

    def _request_reload(self) -> None:
        self._spawn(self.reload(), "reload")

    async def reload(self) -> bool:
        """SIGHUP: apply a new config.toml, or keep the running one if it is broken."""
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                new = await asyncio.to_thread(load_config, self.config_path)
                problems = await asyncio.to_thread(model_problems, new)
                if problems:
                    raise ConfigError(problems)
            except ConfigError as exc:
                for problem in exc.problems:
                    log.error("reload: %s", redact(problem))
                log.error("reload failed: kept the running configuration")
                self._last_error = f"config reload failed: {exc.problems[0]}"
                # One datagram: whoever sees READY=1 also sees why.
                self.notifier.ready(redact(f"{self._last_error} (kept running config)"))
                return False
            try:
                await self._apply(new)
            except Exception as exc:  # a device or pin that will not open: say so, run on
                self._last_error = f"config reload partly applied: {redact(str(exc))}"
                log.error("reload: %s", self._last_error)
                self.notifier.ready(self._last_error)
                return False
            log.info("configuration reloaded from %s", self.config_path)
            self.notifier.ready()
            self._update_status()
            return True

    async def _apply(self, new: Config) -> None:
        old, self.cfg = self.cfg, new
        setup_logging(new.logging.level, new.logging.target)
        self.session.config_changed(
            new.gemini, ApiKeyProvider(new.gemini.api_key_file), new.reconnect
        )
        self.jitter.gain = new.audio.volume_percent / 100
        self.cues.set_volume(new.audio.cue_volume_percent / 100)
        self.dispatch(
            st.ConfigReloaded(conversation=new.conversation, barge_in=BargeInRules.from_config(new))
        )
        ears_changed = any(getattr(old, s) != getattr(new, s) for s in ("wake_word", "vad", "echo"))
        audio_changed = old.audio != new.audio or old.echo.enabled != new.echo.enabled
        if ears_changed:
            from edge_agent.audio.ears import Ears

            try:
                ears = await asyncio.to_thread(Ears.create, _ears_config(new))
            except Exception as exc:
                log.error("reload: cannot load the wake word models: %s", redact(str(exc)))
            else:
                self.ears = ears
                self.capture.set_ears(ears)
                self._sync_ears()
        if audio_changed:
            await asyncio.to_thread(self.engine.stop)
            self.engine = self._make_engine(new)
            await asyncio.to_thread(self.engine.start)
        if old.gpio != new.gpio:
            self.panel.close()
            self.panel = self._open_panel(new)
            if self.machine is not None:
                from edge_agent.core.leds import pattern_for

                self.panel.show(pattern_for(self.machine.state))

    # ------------------------------------------------------------ control socket

    async def _on_control(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "status":
            return {"ok": True, **self.snapshot()}
        if cmd == "button":
            action = request.get("action", "press")
            if action not in ("press", "hold"):
                return {"ok": False, "error": "action must be press or hold"}
            await asyncio.to_thread(self.panel.simulate, action)
            return {"ok": True}
        if cmd == "reload":
            return {"ok": await self.reload()}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def snapshot(self) -> dict[str, Any]:
        """What `edge-agent status` shows; also read by the demo and the tests."""
        machine = self.machine
        jitter = self.jitter.snapshot()
        out: dict[str, Any] = {
            "state": str(machine.state) if machine else "starting",
            "muted": self.capture.muted,
            "captured_samples": self.engine.captured_samples if self.engine else 0,
            "dropped_blocks": self.capture.dropped_blocks,
            "ears_failures": self.capture.ears_failures,
            "last_error": self._last_error,
            "playback": dataclasses.asdict(jitter),
            "leds": self.panel.describe() if self.panel is not None else {},
        }
        if self.session is not None:
            status = self.session.status()
            out["session"] = {
                "state": str(status.state),
                "ready": status.ready,
                "reconnects": status.reconnect_count,
                "handovers": status.handovers,
                "last_error": status.last_error,
            }
        if self.ears is not None:
            out["ears"] = dataclasses.asdict(self.ears.stats)
        if self.engine is not None:
            out["engine"] = self.engine.stats()
        return out


def _stalled(engine: Any) -> bool:
    """The stream opened but delivers nothing (a frozen mic), as opposed to a device that
    is missing: the former should get the service restarted, the latter should not."""
    return bool(engine.input_stalled)


TRANSCRIPT_MAX_PIECES = 1000  # a turn that never completes must not grow memory for ever


def _append_bounded(pieces: list[str], text: str) -> None:
    """Collect transcript pieces for the turn's log line, keeping only the newest."""
    pieces.append(text)
    if len(pieces) > TRANSCRIPT_MAX_PIECES:
        del pieces[: len(pieces) - TRANSCRIPT_MAX_PIECES]


def _in_daemon_thread(fn: Any, *args: Any) -> asyncio.Future[Any]:
    """Run a slow startup step (model loading, device open) in a daemon thread.

    Unlike asyncio.to_thread, a step still running when SIGTERM arrives does not hold
    up the exit: asyncio.run and the interpreter wait for executor threads, not for
    daemon threads, and the 2 s stop promise to systemd holds even mid-startup.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, exc: BaseException | None) -> None:
        if future.done():  # cancelled: nobody waits any more
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed: the daemon is gone
            loop.call_soon_threadsafe(settle, result, error)

    name = getattr(fn, "__qualname__", "startup-step")
    threading.Thread(target=work, name=f"startup:{name}", daemon=True).start()
    return future


class StartupError(Exception):
    """The daemon cannot run with this configuration (models, devices)."""


def run_daemon(config_path: str | Path, *, environ: dict[str, str] | None = None) -> int:
    """`edge-agent run`: load the config, set up logging, run until SIGTERM."""
    import sys

    path = Path(config_path)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(redact(problem), file=sys.stderr)
        return 2
    setup_logging(cfg.logging.level, cfg.logging.target)
    daemon = Daemon(cfg, path, environ=environ)
    return asyncio.run(daemon.run())


__all__ = ["ApiKeyProvider", "Daemon", "StartupError", "run_daemon"]

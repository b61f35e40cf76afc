"""The daemon's lifecycle: start the components, run until SIGTERM, reload on SIGHUP.

`Daemon` builds the devices, the model's tools (`app.abilities`) and the Live session,
installs them in the `Runtime` (`app.runtime`: events, actions, playback) and starts
`Health` (`app.health`: watchdog, device monitor, status) and the timer ringer. The
control socket's requests are answered by `app.commands`. It owns what only the process
as a whole has: signals, the READY/RELOADING/STOPPING messages to systemd, the control
socket and the exit code.
A config.toml that fails to load or names missing models keeps the running one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import importlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.app.checks import model_problems
from edge_agent.app.commands import ControlCommands
from edge_agent.app.control import ControlServer
from edge_agent.app.health import Health
from edge_agent.app.runtime import MuteFile, Runtime, require
from edge_agent.config import Config, ConfigError, load_config, resolve_path
from edge_agent.core import events as ev
from edge_agent.core import state as st
from edge_agent.core.policy import BargeInRules
from edge_agent.logsetup import setup_logging
from edge_agent.quoting import short_repr
from edge_agent.secrets import ApiKeyMissing, permission_warnings, redact, resolve_api_key

if TYPE_CHECKING:  # the real classes load lazily: their imports are the slow part of startup
    from edge_agent.app.abilities import Abilities
    from edge_agent.audio.ears import EarsConfig
    from edge_agent.audio.engine import AudioEngine
    from edge_agent.device.gpio import GpioPanel, NullPanel
    from edge_agent.device.systemd import SystemdNotifier
    from edge_agent.live.session import LiveSession

log = logging.getLogger(__name__)

STOP_DEADLINE_S = 1.5  # SIGTERM to exit must stay under 2 s


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


def _ears_config(cfg: Config) -> EarsConfig:
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
        notifier: SystemdNotifier | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        from edge_agent.device.systemd import SystemdNotifier

        self.cfg = cfg
        self.config_path = config_path
        self.environ = dict(os.environ if environ is None else environ)
        self.notifier = notifier or SystemdNotifier()
        self.state_dir = Path(cfg.daemon.state_dir)
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._exit_code = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.runtime = Runtime(
            cfg,
            mute_file=MuteFile(self.state_dir),
            stop=self._stop,
            spawn=self._spawn,
            status_changed=self._update_status,
        )
        self.health = Health(
            self.runtime,
            self.notifier,
            self.environ,
            watchdog_stall_s=cfg.daemon.watchdog_stall_s,
        )
        self.control: ControlServer | None = None
        self.commands = ControlCommands(
            self.runtime, snapshot=self.snapshot, press=self._press, reload=self.reload
        )

    def dispatch(self, event: Any) -> None:
        """Feed one event to the conversation (loop thread)."""
        self.runtime.dispatch(event)

    def snapshot(self) -> dict[str, Any]:
        """What `edge-agent status` shows."""
        return self.health.snapshot()

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.runtime.bind(loop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)
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
        machine = self.runtime.machine
        log.info("edge-agent ready (state %s)", machine.state if machine else "?")
        self._spawn(self.health.watchdog_loop(), "watchdog")
        self._spawn(self.health.device_monitor(), "device-monitor")
        if self.runtime.abilities is not None:
            self._spawn(self.runtime.abilities.run_ringer(), "timer-ringer")
        await self._stop.wait()
        self.notifier.stopping()
        await self._shutdown()
        log.info("edge-agent stopped")
        return self._exit_code

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
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

    def _update_status(self) -> None:
        self.health.update_status()

    async def _start_components(self) -> None:
        """Everything READY promises: wake word loaded, audio running, session started.

        The wake model check (a child process per model; this thread only waits) runs
        while this process imports the Live SDK (the slowest import, its pydantic types),
        so the two overlap on separate cores.
        """
        from edge_agent.audio.ears import Ears

        cfg = self.cfg
        runtime = self.runtime
        # Not world-readable whatever the umask (the unit's StateDirectoryMode is 0750).
        await asyncio.to_thread(self.state_dir.mkdir, mode=0o750, parents=True, exist_ok=True)
        muted = await asyncio.to_thread(runtime.mute_file.load)
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
            runtime.ears = await _in_daemon_thread(Ears.create, _ears_config(cfg))
        except Exception as exc:
            raise StartupError(f"wake word / audio models: {redact(str(exc))}") from exc
        machine = st.ConversationMachine(
            cfg.conversation, barge_in=BargeInRules.from_config(cfg), muted_at_start=muted
        )
        runtime.machine = machine
        runtime.panel = self._open_panel(cfg)
        abilities = self._make_abilities(cfg)
        runtime.abilities = abilities
        session: LiveSession = live.LiveSession(
            cfg.gemini,
            cfg.reconnect,
            ApiKeyProvider(cfg.gemini.api_key_file),
            self.state_dir,
            runtime.on_live_event,
            tools=abilities.registry(),
            tools_provider=abilities.session_tools,
        )
        runtime.session = session
        session.start()
        try:
            key = await asyncio.to_thread(resolve_api_key, cfg.gemini.api_key_file)
            log.info("Gemini API key from %s", key.source)
        except ApiKeyMissing as exc:
            runtime.last_error = str(exc)
            log.error("%s; the device will wake but cannot answer until a key is added", exc)
        runtime.run_actions(machine.initial_actions())
        await abilities.start()  # saved volume; timers due while down ring now
        runtime.sync_ears()
        runtime.start_capture()
        engine = self._make_engine(cfg)
        runtime.engine = engine
        await _in_daemon_thread(engine.start)
        self.control = ControlServer(self.state_dir / "control.sock", self._on_control)
        try:
            await self.control.start()
        except OSError as exc:
            log.warning("control socket unavailable: %s", exc)
            self.control = None

    def _open_panel(self, cfg: Config) -> GpioPanel | NullPanel:
        """Button and LEDs; gpiozero's threads hand button events to the event loop."""
        from edge_agent.device.gpio import open_panel

        loop = asyncio.get_running_loop()
        dispatch = self.runtime.dispatch

        def emit(event: ev.ButtonEvent) -> None:
            loop.call_soon_threadsafe(dispatch, event)

        return open_panel(cfg.gpio, emit=emit)

    def _make_abilities(self, cfg: Config) -> Abilities:
        from edge_agent.app.abilities import Abilities
        from edge_agent.core.cues import Cue

        runtime = self.runtime
        playback = runtime.playback

        def apply_volume(percent: int) -> None:
            playback.jitter.gain = percent / 100

        return Abilities(
            cfg,
            environ=self.environ,
            apply_volume=apply_volume,
            play_timer_cue=lambda: playback.cues.play(Cue.TIMER),
            on_timer_event=runtime.on_timer_event,
            end_conversation=lambda: runtime.dispatch(ev.EndConversationRequested()),
            device_status=self.health.device_status,
        )

    def _make_engine(self, cfg: Config) -> AudioEngine:
        from edge_agent.audio.engine import AudioEngine

        return AudioEngine(
            input_device=cfg.audio.input_device,
            output_device=cfg.audio.output_device,
            capture_rate_hz=cfg.audio.capture_rate_hz,
            playback_rate_hz=cfg.audio.playback_rate_hz,
            duplex=cfg.echo.enabled,
            duplex_rate_hz=cfg.audio.duplex_rate_hz,
            block_ms=cfg.audio.block_ms,
            output_source=self.runtime.playback.output_source,
            output_quiet=self.runtime.playback.output_quiet,
            on_block=self.runtime.capture.on_block,
            reopen_max_delay_s=cfg.audio.reopen_max_delay_s,
        )

    async def _shutdown(self) -> None:
        """Stop everything within STOP_DEADLINE_S; LEDs end dark."""
        runtime = self.runtime
        runtime.cancel_timers()
        for task in list(self._tasks):
            task.cancel()
        steps: list[Any] = []
        if runtime.abilities is not None:
            steps.append(runtime.abilities.close())
        if runtime.session is not None:
            steps.append(runtime.session.stop())
        if self.control is not None:
            steps.append(self.control.stop())
        if runtime.engine is not None:
            steps.append(asyncio.to_thread(runtime.engine.stop))
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
        runtime.close()

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
            except Exception as exc:  # ConfigError: the owner's mistake; anything else: ours
                problems = (
                    exc.problems
                    if isinstance(exc, ConfigError)
                    else [f"{self.config_path}: could not be read ({short_repr(exc, 200)})"]
                )
                if not isinstance(exc, ConfigError):
                    log.debug("reload: unexpected failure", exc_info=True)
                for problem in problems:
                    log.error("reload: %s", redact(problem))
                log.error("reload failed: kept the running configuration")
                self.runtime.last_error = f"config reload failed: {problems[0]}"
                # One datagram: whoever sees READY=1 also sees why (systemd leaves RELOADING).
                self.notifier.ready(redact(f"{self.runtime.last_error} (kept running config)"))
                return False
            try:
                await self._apply(new)
            except Exception as exc:  # a device or pin that will not open: say so, run on
                self.runtime.last_error = f"config reload partly applied: {redact(str(exc))}"
                log.error("reload: %s", self.runtime.last_error)
                self.notifier.ready(self.runtime.last_error)
                return False
            log.info("configuration reloaded from %s", self.config_path)
            self.notifier.ready()
            self._update_status()
            return True

    async def _apply(self, new: Config) -> None:
        old, self.cfg = self.cfg, new
        runtime = self.runtime
        self.health.watchdog_stall_s = new.daemon.watchdog_stall_s
        setup_logging(new.logging.level, new.logging.target)
        require(runtime.session, "Live session").config_changed(
            new.gemini, ApiKeyProvider(new.gemini.api_key_file), new.reconnect
        )
        # The volume stays where the owner (or the model) set it: audio.volume_percent is
        # the level of a device that was never set.
        runtime.playback.cues.set_volume(new.audio.cue_volume_percent / 100)
        runtime.dispatch(
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
                runtime.use_ears(ears)
        if audio_changed:
            await asyncio.to_thread(require(runtime.engine, "audio engine").stop)
            engine = self._make_engine(new)
            runtime.engine = engine
            await asyncio.to_thread(engine.start)
        if old.gpio != new.gpio:
            runtime.started_panel().close()
            panel = self._open_panel(new)
            runtime.panel = panel
            if runtime.machine is not None:
                from edge_agent.core.leds import pattern_for

                panel.show(pattern_for(runtime.machine.state))

    # ------------------------------------------------------------ control socket

    async def _on_control(self, request: dict[str, Any]) -> dict[str, Any]:
        return await self.commands.handle(request)

    async def _press(self, action: str) -> None:
        """The virtual button drives the (mock) GPIO pin, so it takes the real path."""
        await asyncio.to_thread(self.runtime.started_panel().simulate, action)


def _in_daemon_thread(fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
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
    for warning in permission_warnings(path, cfg.gemini.api_key_file):
        log.warning("%s", warning)
    daemon = Daemon(cfg, path, environ=environ)
    return asyncio.run(daemon.run())


__all__ = ["ApiKeyProvider", "Daemon", "StartupError", "run_daemon"]

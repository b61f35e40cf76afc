"""Is the appliance well, and what it tells systemd and `edge-agent status`.

The watchdog ping, the audio device monitor, the STATUS= line and the status snapshot
served by the control socket. All of it reads the runtime's components; the only thing
it changes is the conversation's view of the audio device (AudioDeviceLost/Restored).
The device monitor's tick also logs a step of the wall clock (``core.clockstep``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from edge_agent import statefile
from edge_agent.core import events as ev
from edge_agent.core.clockstep import ClockStepDetector
from edge_agent.core.watchdog import WatchdogGate
from edge_agent.secrets import redact

if TYPE_CHECKING:
    from edge_agent.app.runtime import Runtime
    from edge_agent.audio.engine import AudioEngine
    from edge_agent.device.systemd import SystemdNotifier
    from edge_agent.live.session import LiveStatus

log = logging.getLogger(__name__)

DEVICE_POLL_S = 0.5
STATE_RETRY_S = 5.0  # an unwritable state directory is tried again this often
NETWORK_CHECK_TIMEOUT_S = 2.0
GOOGLE_LIVE_HOST = "generativelanguage.googleapis.com"


class Health:
    """Watchdog, device monitor and status reports for one running `Runtime`."""

    def __init__(
        self,
        runtime: Runtime,
        notifier: SystemdNotifier,
        environ: Mapping[str, str],
        *,
        watchdog_stall_s: float,
    ) -> None:
        self.runtime = runtime
        self.notifier = notifier
        self.environ = environ
        self.watchdog_stall_s = watchdog_stall_s  # a reload may change it
        self._speaker_missing = False  # engine degraded: listening without playback
        self._audio_ok = True
        self._save_problems: list[str] = []  # what the state directory cannot hold now
        self._state_retry_at = 0.0
        self._clock_steps = ClockStepDetector()
        self.started_at = time.monotonic()

    async def watchdog_loop(self) -> None:
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
        gate = WatchdogGate(stall_s=self.watchdog_stall_s)
        period = max(0.05, interval / 2)
        refused = False
        while True:
            await asyncio.sleep(period)
            gate.stall_s = self.watchdog_stall_s
            now = time.monotonic()
            engine = self.runtime.engine
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

    async def device_monitor(self) -> None:
        """Turns the engine's device state into AudioDeviceLost/Restored events."""
        runtime = self.runtime
        while True:
            await asyncio.sleep(DEVICE_POLL_S)
            self._check_wall_clock(time.monotonic(), time.time())
            await self._check_state_dir()
            engine = runtime.engine
            if engine is None:
                continue
            speaker_missing = engine.output_missing
            if speaker_missing != self._speaker_missing:  # the mic still runs: status only
                self._speaker_missing = speaker_missing
                self.update_status()
            ok = engine.healthy
            if ok != self._audio_ok:
                self._audio_ok = ok
                if ok:
                    log.info("audio device back")
                    runtime.dispatch(ev.AudioDeviceRestored())
                else:
                    reason = engine.last_error or "audio device error"
                    runtime.last_error = reason
                    runtime.dispatch(ev.AudioDeviceLost(reason))

    def _check_wall_clock(self, now: float, wall_now: float) -> None:
        """Say once per step that the wall clock jumped, and that nothing waits on it."""
        step = self._clock_steps.observe(now, wall_now)
        if step is not None:
            log.info(
                "wall clock stepped by %s (NTP, or set by hand); timers set since boot and "
                "the session's resumption handle keep their time (monotonic clock)",
                step.describe(),
            )

    async def _check_state_dir(self) -> None:
        """Retry what the state directory refused; STATUS follows what is still unsaved."""
        now = time.monotonic()
        if self._save_problems and now >= self._state_retry_at:
            self._state_retry_at = now + STATE_RETRY_S
            await asyncio.to_thread(statefile.retry_pending)
        problems = statefile.save_problems()
        if problems != self._save_problems:
            if not self._save_problems:
                self._state_retry_at = now + STATE_RETRY_S
            self._save_problems = problems
            self.update_status()

    def update_status(self) -> None:
        """One STATUS= datagram: state, session, the last error, a missing speaker."""
        runtime = self.runtime
        machine = runtime.machine
        parts = [f"state: {machine.state if machine else 'starting'}"]
        if runtime.session is not None:
            status = runtime.session.status()
            parts.append(f"session: {status.state}")
            if status.model_note:  # a retired model replaced: say so where owners look
                parts.append(f"model: {status.model} ({status.model_note})")
            if status.reconnect_count:
                parts.append(f"reconnects: {status.reconnect_count}")
            offline = offline_text(status)
            if offline:
                parts.append(offline)
            elif status.last_error:
                parts.append(f"last error: {status.last_error}")
        elif runtime.last_error:
            parts.append(f"last error: {runtime.last_error}")
        engine = runtime.engine
        if not self._audio_ok and engine is not None:  # an output failure only degrades
            parts.append(f"microphone lost: {engine.last_error or 'input device missing'}")
        if self._speaker_missing and engine is not None:
            parts.append(f"speaker lost: {engine.last_error or 'output device missing'}")
        problem = getattr(runtime.panel, "problem", None)  # GPIO unavailable at start
        if problem:
            parts.append(problem)
        parts.extend(self._save_problems)
        self.notifier.status(redact("; ".join(parts)))

    async def device_status(self) -> dict[str, Any]:
        """What the model's device_status tool reports: uptime, state, network, last error."""
        runtime = self.runtime
        machine = runtime.machine
        session = runtime.session
        out: dict[str, Any] = {
            "uptime_s": round(time.monotonic() - self.started_at),
            "state": str(machine.state) if machine else "starting",
            "muted": runtime.capture.muted,
            "last_error": runtime.last_error,
        }
        if session is not None:
            status = session.status()
            out["service_connected"] = status.ready
            out["reconnects"] = status.reconnect_count
            out["last_error"] = status.last_error or runtime.last_error
            out["network_reachable"] = await _reachable(session.cfg.base_url)
        if runtime.abilities is not None:
            out["volume_percent"] = runtime.abilities.volume.percent
        return out

    def snapshot(self) -> dict[str, Any]:
        """What `edge-agent status` shows; also read by the demo and the tests."""
        runtime = self.runtime
        machine = runtime.machine
        engine = runtime.engine
        jitter = runtime.playback.jitter.snapshot()
        out: dict[str, Any] = {
            "state": str(machine.state) if machine else "starting",
            "muted": runtime.capture.muted,
            "captured_samples": engine.captured_samples if engine else 0,
            "dropped_blocks": runtime.capture.dropped_blocks,
            "ears_failures": runtime.capture.ears_failures,
            "last_error": runtime.last_error,
            "playback": dataclasses.asdict(jitter),
            "leds": runtime.panel.describe() if runtime.panel is not None else {},
            "unsaved": statefile.save_problems(),
            "gpio_problem": getattr(runtime.panel, "problem", None),
        }
        if runtime.session is not None:
            status = runtime.session.status()
            out["session"] = {
                "state": str(status.state),
                "ready": status.ready,
                "reconnects": status.reconnect_count,
                "handovers": status.handovers,
                "bad_frames": status.bad_frames,
                "last_error": status.last_error,
                "model": status.model,
                "configured_model": status.configured_model,
                "model_note": status.model_note,
                "offline": offline_text(status),
                # What the user said that the server may not have yet (bounded by
                # reconnect.replay_buffer_max_s; dropped_unsent_audio_bytes: speech lost).
                "uplink": dataclasses.asdict(status.replay),
            }
        if runtime.ears is not None:
            out["ears"] = dataclasses.asdict(runtime.ears.stats)
        if engine is not None:
            out["engine"] = engine.stats()
        abilities = runtime.abilities
        if abilities is not None:
            book = abilities.timers.book
            out["volume_percent"] = abilities.volume.percent
            out["timers"] = {
                "running": [abilities.timers.describe(t) for t in book.running()],
                "ringing": [t.label for t in book.ringing()],
            }
        out["uptime_s"] = round(time.monotonic() - self.started_at)
        out["tasks"] = _task_count()  # asyncio tasks alive: flat over a soak, or a leak
        return out


def offline_text(status: LiveStatus) -> str | None:
    """'offline: WHY; retrying in N s' while a non-fatal failure keeps the session down.

    Fatal trouble (the key, the model) already shows as the OFFLINE state and its reason.
    """
    if status.ready or status.fatal or not status.last_error:
        return None
    if str(status.state) not in ("retry_wait", "connecting"):
        return None
    if status.retry_in_s is None:
        return f"offline: {status.last_error}; trying again now"
    return f"offline: {status.last_error}; retrying in {math.ceil(status.retry_in_s)} s"


def _task_count() -> int | None:
    """Tasks on the running loop (None off the loop, where there is nothing to count)."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return None


async def _reachable(base_url: str) -> bool:
    """Whether a TCP connection to the Live endpoint opens within a couple of seconds."""
    from urllib.parse import urlsplit

    parts = urlsplit(base_url) if base_url else None
    host = (parts.hostname if parts else None) or GOOGLE_LIVE_HOST
    port = (parts.port if parts else None) or 443
    try:
        async with asyncio.timeout(NETWORK_CHECK_TIMEOUT_S):
            _reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def _stalled(engine: AudioEngine) -> bool:
    """The stream opened but delivers nothing (a frozen mic), as opposed to a device that
    is missing: the former should get the service restarted, the latter should not."""
    return bool(engine.input_stalled)

"""What the control socket's requests do: `edge-agent status | trigger | stop | ...`.

One request, one JSON answer with ``ok``; a request the device cannot carry out now
answers ``ok: false`` with an ``error`` sentence the CLI prints as it is. Everything runs
on the event loop; file reads go to a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from edge_agent.abilities.history import read_last
from edge_agent.abilities.timers import StopReason
from edge_agent.abilities.volume import VolumeError
from edge_agent.core import events as ev

if TYPE_CHECKING:
    from edge_agent.app.runtime import Runtime

MAX_HISTORY_ENTRIES = 1000
MAX_TEXT_CHARS = 2000

Answer = dict[str, Any]


class ControlCommands:
    """Answers control requests for one running daemon."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        snapshot: Callable[[], dict[str, Any]],
        press: Callable[[str], Awaitable[None]],
        reload: Callable[[], Awaitable[bool]],
    ) -> None:
        self.runtime = runtime
        self._snapshot = snapshot
        self._press = press
        self._reload = reload

    async def handle(self, request: dict[str, Any]) -> Answer:
        cmd = request.get("cmd")
        handler = {
            "status": self._status,
            "button": self._button,
            "reload": self._reload_config,
            "trigger": self._trigger,
            "stop": self._stop,
            "mute": self._mute,
            "unmute": self._mute,
            "volume": self._volume,
            "timers": self._timers,
            "say": self._text,
            "announce": self._text,
            "history": self._history,
        }.get(str(cmd))
        if handler is None:
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        return await handler(request)

    async def _status(self, _request: dict[str, Any]) -> Answer:
        return {"ok": True, **self._snapshot()}

    async def _button(self, request: dict[str, Any]) -> Answer:
        action = request.get("action", "press")
        if action not in ("press", "hold"):
            return {"ok": False, "error": "action must be press or hold"}
        await self._press(action)
        return {"ok": True}

    async def _reload_config(self, _request: dict[str, Any]) -> Answer:
        return {"ok": await self._reload()}

    async def _trigger(self, _request: dict[str, Any]) -> Answer:
        problem = self._unavailable(for_listening=True)
        if problem:
            return {"ok": False, "error": problem}
        self.runtime.dispatch(ev.ListenRequested())
        return {"ok": True, "state": self._state()}

    async def _stop(self, _request: dict[str, Any]) -> Answer:
        machine = self.runtime.machine
        was_ringing = bool(machine and machine.ringing)
        self.runtime.dispatch(ev.StopRequested())
        abilities = self.runtime.abilities
        if abilities is not None and abilities.timers.book.is_ringing:
            await abilities.timers.stop_ringing(StopReason.CONTROL)  # rang before the machine knew
            was_ringing = True
        return {"ok": True, "stopped": "ring" if was_ringing else "conversation"}

    async def _mute(self, request: dict[str, Any]) -> Answer:
        muted = request.get("cmd") == "mute"
        self.runtime.dispatch(ev.MuteRequested(muted))
        return {"ok": True, "muted": self.runtime.capture.muted, "state": self._state()}

    async def _volume(self, request: dict[str, Any]) -> Answer:
        abilities = self.runtime.abilities
        if abilities is None:
            return {"ok": False, "error": "the device is still starting"}
        if request.get("percent") is not None:
            try:
                await abilities.volume.set(request["percent"])
            except VolumeError as exc:
                return {"ok": False, "error": str(exc)}
        return {"ok": True, "percent": abilities.volume.percent}

    async def _timers(self, _request: dict[str, Any]) -> Answer:
        abilities = self.runtime.abilities
        if abilities is None:
            return {"ok": False, "error": "the device is still starting"}
        service = abilities.timers
        book = service.book
        return {
            "ok": True,
            "running": [service.describe(t) for t in book.running()],
            "ringing": [service.describe(t) for t in book.ringing()],
            "missed": [service.describe(t) for t in book.missed()],
        }

    async def _text(self, request: dict[str, Any]) -> Answer:
        text = " ".join(str(request.get("text") or "").split())
        if not text:
            return {"ok": False, "error": "nothing to say: give the text"}
        if len(text) > MAX_TEXT_CHARS:
            return {"ok": False, "error": f"the text is over {MAX_TEXT_CHARS} characters"}
        kind = ev.TextTurnKind(str(request.get("cmd")))
        problem = self.runtime.request_text_turn(text, kind)
        if problem:
            return {"ok": False, "error": problem}
        machine = self.runtime.machine
        queued = bool(machine and machine.queued_texts)
        return {"ok": True, "queued": queued, "state": self._state()}

    async def _history(self, request: dict[str, Any]) -> Answer:
        from edge_agent.app.abilities import history_path

        abilities = self.runtime.abilities
        if abilities is None:
            return {"ok": False, "error": "the device is still starting"}
        cfg = abilities.cfg
        if not cfg.history.enabled:
            return {"ok": False, "error": "the history is off ([history] enabled = false)"}
        try:
            n = max(0, min(int(request.get("n", 20)), MAX_HISTORY_ENTRIES))
        except (TypeError, ValueError):
            return {"ok": False, "error": "n must be a number"}
        entries = await asyncio.to_thread(
            read_last, history_path(cfg), n, keep_files=cfg.history.keep_files
        )
        return {"ok": True, "entries": entries}

    def _state(self) -> str:
        machine = self.runtime.machine
        return str(machine.state) if machine is not None else "starting"

    def _unavailable(self, *, for_listening: bool) -> str | None:
        machine = self.runtime.machine
        if machine is None:
            return "the device is still starting"
        state = str(machine.state)
        if for_listening and state in ("muted", "error"):
            return f"the device is {state} and cannot listen now"
        return None

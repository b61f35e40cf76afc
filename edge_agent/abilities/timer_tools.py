"""Timers as the model, the control socket and the ringer see them.

``TimerService`` holds the pure ``TimerBook``, its file in the state directory and the
wall clock; every change is saved from a worker thread (an fsync on an SD card can take
tens of milliseconds, the event loop must not wait for it). Every event (fired, ring
ended, missed) goes to one listener, whichever path caused it, so the ringer and the
daemon learn about a ring stopped by ``cancel_timer`` the same way as one that timed out.

``TimerRinger`` is the loop that wakes at the book's next deadline and repeats the timer
cue while something rings; the cue and the LEDs are injected callables.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
import unicodedata
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from google.genai import types

from edge_agent.abilities.timers import (
    RingEnded,
    StopReason,
    Timer,
    TimerBook,
    TimerError,
    TimerEvent,
    TimerFired,
    TimerMissed,
    describe_duration,
)
from edge_agent.live.tools import Tool, ToolResult, quote_argument
from edge_agent.statefile import read_json, save_json

logger = logging.getLogger(__name__)

TIMERS_FILE = "timers.json"
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


def read_boot_id() -> str:
    """This boot's id ("" when unknown: every restart is then treated as a reboot)."""
    try:
        return BOOT_ID_FILE.read_text().strip()
    except OSError:
        return ""


TIMER_TOOL_NAMES = ("set_timer", "list_timers", "cancel_timer")
MAX_NAME_CHARS = 40  # a name is a word or two ("pasta"); it is logged, saved and spoken


class TimerStore:
    """The book's JSON file; saves may come from several threads, the newest one wins."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._saved_seq = -1

    def load(self) -> Any | None:
        return read_json(self.path)

    def save(self, snapshot: dict[str, Any], seq: int) -> None:
        with self._lock:
            if seq <= self._saved_seq:
                return  # a newer snapshot is already on disk
            save_json(self.path, snapshot, "timers")  # kept for a retry when it fails
            self._saved_seq = seq


class TimerService:
    """The timers of this device: set, list, cancel, advance and silence, each saved."""

    def __init__(
        self,
        book: TimerBook,
        store: TimerStore,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        boot_id: Callable[[], str] = read_boot_id,
        listener: Callable[[TimerEvent], None] | None = None,
    ) -> None:
        self.book = book
        self.store = store
        self.clock = clock  # the book's clock: monotonic, a wall-clock step does not move it
        self.wall_clock = wall_clock  # for the file and for "rings at 14:05" only
        self._read_boot_id = boot_id
        self._boot_id = ""
        self.listener = listener
        self.changed = asyncio.Event()  # wakes the ringer when the deadlines moved
        self._seq = 0

    async def load(self) -> list[TimerEvent]:
        """Read the file (in a thread) and apply the restart rules of TimerBook.restore."""
        self._boot_id = await asyncio.to_thread(self._read_boot_id)
        data = await asyncio.to_thread(self.store.load)
        events = self.book.restore(data, self.clock(), self.wall_clock(), self._boot_id)
        for event in events:
            if isinstance(event, TimerMissed):
                logger.warning(
                    "timer %s came due %.0f s ago while the daemon was down: missed",
                    event.timer.label,
                    event.late_s,
                )
        await self._changed(events)
        return events

    async def set(self, duration_s: float, name: str = "") -> Timer:
        timer = self.book.add(duration_s, name, self.clock())
        await self._changed([])
        # Logged once it is on disk: a stop right after this line cannot lose the timer.
        logger.info("timer %s set for %s", timer.label, describe_duration(duration_s))
        return timer

    async def cancel(self, ref: str = "") -> Timer:
        timer, ended = self.book.cancel(ref, self.clock())
        await self._changed([ended] if ended else [])
        logger.info("timer %s cancelled", timer.label)
        return timer

    async def stop_ringing(self, reason: StopReason) -> RingEnded | None:
        ended = self.book.stop_ringing(reason)
        if ended:
            await self._changed([ended])
        return ended

    async def advance(self) -> list[TimerEvent]:
        events = self.book.advance(self.clock(), self.wall_clock())
        if events:
            await self._changed(events)
        return events

    async def acknowledge_missed(self) -> list[Timer]:
        missed = self.book.acknowledge_missed()
        if missed:
            await self._changed([])
        return missed

    def describe(self, timer: Timer) -> dict[str, Any]:
        """A timer as the model and `edge-agent timers` get it."""
        now = self.clock()
        due_wall = timer.due_wall
        if due_wall is None:
            due_wall = timer.due_at - now + self.wall_clock()
        rings_at = datetime.fromtimestamp(due_wall).astimezone().strftime("%H:%M:%S")
        out: dict[str, Any] = {
            "id": timer.id,
            "name": timer.name or timer.label,
            "duration": describe_duration(timer.duration_s),
            "state": timer.state.value,
            "rings_at": rings_at,
        }
        if timer.state.value == "running":
            out["remaining"] = describe_duration(math.ceil(timer.remaining_s(now)))
            out["remaining_s"] = math.ceil(timer.remaining_s(now))
        return out

    async def _changed(self, events: list[TimerEvent]) -> None:
        for event in events:
            self._log(event)
            if self.listener is not None:
                try:
                    self.listener(event)
                except Exception:  # a listener bug must not lose the saved state
                    logger.exception("timer listener failed on %s", type(event).__name__)
        self.changed.set()
        self._seq += 1
        # A state directory that cannot be written: statefile logs it once and retries.
        snapshot = self.book.to_json(self.clock(), self.wall_clock(), self._boot_id)
        await asyncio.to_thread(self.store.save, snapshot, self._seq)

    @staticmethod
    def _log(event: TimerEvent) -> None:
        if isinstance(event, TimerFired):
            late = f" ({event.late_s:.0f} s late: came due while down)" if event.late_s else ""
            logger.info("timer %s rings%s", event.timer.label, late)
        elif isinstance(event, RingEnded):
            labels = ", ".join(t.label for t in event.timers)
            logger.info("ring of %s ended: %s", labels, event.reason.value)


class TimerRinger:
    """Sleeps until the next deadline; while a timer rings, restarts the cue each period.

    ``play_cue()`` starts one timer cue; ``show_ringing(bool)`` turns the ringing LED
    pattern on and off. Both run on the event loop and must not block.
    """

    def __init__(
        self,
        service: TimerService,
        play_cue: Callable[[], None],
        show_ringing: Callable[[bool], None],
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.play_cue = play_cue
        self.show_ringing = show_ringing
        self.monotonic = monotonic
        self._last_cue_at: float | None = None
        self._shown = False

    async def run(self) -> None:
        service = self.service
        policy = service.book.policy
        while True:
            service.changed.clear()
            await service.advance()
            ringing = service.book.is_ringing
            if ringing != self._shown:
                self._shown = ringing
                self.show_ringing(ringing)
                if not ringing:
                    self._last_cue_at = None
            waits: list[float] = []
            if ringing:
                now = self.monotonic()
                if policy.cue_due(self._last_cue_at, now):
                    self.play_cue()
                    self._last_cue_at = now
                waits.append(self._last_cue_at + policy.cue_period_s - now)  # type: ignore[operator]
            deadline = service.book.next_deadline()
            if deadline is not None:
                waits.append(deadline - service.clock())
            # Wake at least once a minute: a wall-clock step (NTP) moves the deadlines of
            # timers restored after a reboot (wall-anchored); the others never move.
            timeout = min([60.0, *waits])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(service.changed.wait(), max(0.0, timeout))


# ---------------------------------------------------------------------- the tools

_INT = types.Schema(type=types.Type.INTEGER)

SET_TIMER = types.FunctionDeclaration(
    name="set_timer",
    description=(
        "Start a countdown timer on this device; it rings when it ends. Give the duration "
        "in hours, minutes and/or seconds (at least one), and a short name when the user "
        "gives one (e.g. 'pasta')."
    ),
    parameters=types.Schema(
        type=types.Type.OBJECT,
        properties={
            "hours": _INT,
            "minutes": _INT,
            "seconds": _INT,
            "name": types.Schema(type=types.Type.STRING),
        },
    ),
)

LIST_TIMERS = types.FunctionDeclaration(
    name="list_timers",
    description=(
        "The timers on this device: running ones with the time left, ringing ones, and any "
        "that ended while the device was off (missed)."
    ),
    parameters=types.Schema(type=types.Type.OBJECT, properties={}),
)

CANCEL_TIMER = types.FunctionDeclaration(
    name="cancel_timer",
    description=(
        "Cancel a timer (and stop it ringing). 'name' is the timer's name or number; leave "
        "it out when there is only one timer."
    ),
    parameters=types.Schema(
        type=types.Type.OBJECT, properties={"name": types.Schema(type=types.Type.STRING)}
    ),
)


def parse_duration(args: Mapping[str, Any]) -> float:
    """hours/minutes/seconds from the model -> seconds; TimerError says what is wrong."""
    total = 0.0
    given = False
    for key, scale in (("hours", 3600), ("minutes", 60), ("seconds", 1)):
        value = args.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise TimerError(f"{key} must be a number, not {quote_argument(value)}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TimerError(f"{key} must be a number, not {quote_argument(value)}")
        try:
            value = float(value)  # an int of hundreds of digits does not fit
        except OverflowError:
            raise TimerError(f"{key} is far too large") from None
        if not math.isfinite(value) or value < 0:
            raise TimerError(f"{key} must be zero or more, not {value}")
        given = True
        total += value * scale
    if not given:
        raise TimerError("say how long: give hours, minutes or seconds")
    return total


def _name_arg(args: Mapping[str, Any]) -> str:
    """The name as plain text: control and format characters (NUL, escape sequences,
    bidirectional overrides, zero-width marks) and lone surrogates (not UTF-8: the
    timers file could not be saved again) removed, since it reaches the log, the
    terminal of `edge-agent timers` and the state file."""
    name = args.get("name", "")
    if name is None:
        return ""
    if not isinstance(name, str):
        raise TimerError(f"name must be text, not {quote_argument(name)}")
    name = "".join(c if unicodedata.category(c) not in ("Cc", "Cf", "Cs") else " " for c in name)
    name = " ".join(name.split())
    if len(name) > MAX_NAME_CHARS:
        raise TimerError(f"a timer name can be at most {MAX_NAME_CHARS} characters")
    return name


def timer_tools(service: TimerService) -> list[Tool]:
    """set_timer, list_timers and cancel_timer over one TimerService."""

    async def set_timer(args: Mapping[str, Any]) -> ToolResult:
        try:
            timer = await service.set(parse_duration(args), _name_arg(args))
        except TimerError as exc:
            return {"error": str(exc)}
        return {"ok": True, "timer": service.describe(timer)}

    async def list_timers(_args: Mapping[str, Any]) -> ToolResult:
        book = service.book
        result: dict[str, Any] = {
            "running": [service.describe(t) for t in book.running()],
            "ringing": [service.describe(t) for t in book.ringing()],
        }
        missed = await service.acknowledge_missed()
        if missed:
            result["missed_while_off"] = [service.describe(t) for t in missed]
        return result

    async def cancel_timer(args: Mapping[str, Any]) -> ToolResult:
        try:
            timer = await service.cancel(_name_arg(args))
        except TimerError as exc:
            return {"error": str(exc)}
        return {"ok": True, "cancelled": service.describe(timer)}

    return [
        Tool(SET_TIMER, set_timer),
        Tool(LIST_TIMERS, list_timers),
        Tool(CANCEL_TIMER, cancel_timer),
    ]

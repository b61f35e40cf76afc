"""Kitchen timers: the book of timers and the ring policy, as pure code (time passed in).

The book's clock is the monotonic one (``time.monotonic()``: CLOCK_MONOTONIC, which on
Linux counts from boot, the same for every process, and never steps). A Pi without a
real-time clock boots with a wrong wall clock and NTP later steps it by hours, forward
or back: a timer of ten minutes must still ring in ten minutes, not at the step (all at
once) nor hours late. The wall clock is used only where the monotonic one cannot go:

- The file holds each due time twice: monotonic (with the boot's id) and wall-clock.
  A restart of the daemon within the same boot (a crash, an update) restores the
  monotonic due time exactly, whatever the wall clock did meanwhile.
- After a reboot only the wall clock links the two runs. Such a timer is
  *wall-anchored* (``Timer.due_wall``): its due time follows the wall clock
  (``TimerBook.advance`` is given both clocks), because a step after such a boot is
  NTP correcting the clock, and the timer must come due at the corrected time. A jump
  while the device was off is therefore taken as real: it can only be judged by the
  wall clock, and the rules below (ring if recent, else missed) apply to it.

What happens to timers that came due while the daemon was down (``TimerBook.restore``):

- came due less than ``max_ring_s`` ago: it rings now, for the rest of the window it
  would have rung anyway. A restart of a few seconds (a crash, an update) must not
  swallow the ring of the pasta timer.
- came due longer ago: it is reported as *missed* (to the log, in ``list_timers`` and to
  the model at the next session) and does not ring. Ringing for fifteen minutes about
  something that ended an hour ago, after a power cut, is noise nobody is there to stop.

The ring (``RingPolicy``): the timer cue repeats every ``cue_period_s`` for at most
``max_ring_s`` (Home Assistant Voice PE stops after 15 minutes). The button, the wake
word, speech, the control socket's ``stop`` and cancelling the timer end it; those
inputs are consumed by the ring (pressing the button to silence a timer does not also
start a conversation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

DEFAULT_MAX_RING_S = 900.0
DEFAULT_CUE_PERIOD_S = 2.0
# Missed timers are kept this long for list_timers and the next session, then dropped.
MISSED_KEEP_S = 24 * 3600.0
STORE_VERSION = 1


class TimerError(ValueError):
    """A request the book refuses; the message is meant to be spoken by the model."""


class TimerState(StrEnum):
    RUNNING = "running"
    RINGING = "ringing"
    MISSED = "missed"


class StopReason(StrEnum):
    """What ended a ring."""

    BUTTON = "button"
    WAKE_WORD = "wake_word"
    VOICE = "voice"
    CONTROL = "control"  # `edge-agent stop`
    CANCELLED = "cancelled"  # cancel_timer on a ringing timer
    TIMED_OUT = "timed_out"  # rang for max_ring_s


# The inputs that stop a ring and are used up by it (they do nothing else while ringing).
RING_STOPPERS = frozenset({StopReason.BUTTON, StopReason.WAKE_WORD, StopReason.VOICE})


@dataclass(frozen=True)
class RingPolicy:
    max_ring_s: float = DEFAULT_MAX_RING_S
    cue_period_s: float = DEFAULT_CUE_PERIOD_S

    def ring_until(self, due_at: float) -> float:
        return due_at + self.max_ring_s

    def cue_due(self, last_cue_at: float | None, now: float) -> bool:
        """Whether the ringer should start the cue again (first cue at once)."""
        return last_cue_at is None or now - last_cue_at >= self.cue_period_s


@dataclass(frozen=True)
class Timer:
    id: int
    name: str  # "" when the user gave none
    duration_s: float
    created_at: float  # the book's (monotonic) clock
    due_at: float  # the book's (monotonic) clock
    state: TimerState = TimerState.RUNNING
    due_wall: float | None = None  # set: restored after a reboot, follows the wall clock

    @property
    def label(self) -> str:
        """How the timer is called when spoken about: its name, or its duration."""
        return self.name or f"{describe_duration(self.duration_s)} timer"

    def remaining_s(self, now: float) -> float:
        return max(0.0, self.due_at - now)

    def to_json(self, wall_offset: float = 0.0) -> dict[str, Any]:
        """``due_at`` / ``created_at`` in wall-clock seconds (``wall_offset``: wall minus
        monotonic now), ``due_mono`` in the book's clock for a restart in the same boot."""
        return {
            "id": self.id,
            "name": self.name,
            "duration_s": self.duration_s,
            "created_at": self.created_at + wall_offset,
            "due_at": self.due_wall if self.due_wall is not None else self.due_at + wall_offset,
            "due_mono": self.due_at,
            "wall_anchored": self.due_wall is not None,
            "state": self.state.value,
        }

    @classmethod
    def from_json(cls, data: Any) -> Timer:
        if not isinstance(data, dict):
            raise ValueError("a timer must be an object")
        state = TimerState(data.get("state", TimerState.RUNNING.value))
        return cls(
            id=int(data["id"]),
            name=str(data.get("name", "")),
            duration_s=float(data["duration_s"]),
            created_at=float(data["created_at"]),
            due_at=float(data["due_at"]),
            state=state,
        )


@dataclass(frozen=True)
class TimerFired:
    """A timer started ringing; ``late_s`` > 0 when it came due while the daemon was down."""

    timer: Timer
    late_s: float = 0.0


@dataclass(frozen=True)
class RingEnded:
    timers: tuple[Timer, ...]
    reason: StopReason


@dataclass(frozen=True)
class TimerMissed:
    timer: Timer
    late_s: float


TimerEvent = TimerFired | RingEnded | TimerMissed


def describe_duration(seconds: float) -> str:
    """A duration as people say it: "1 hour 30 minutes", "45 seconds"."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{value} {unit}{'' if value == 1 else 's'}"
        for value, unit in ((hours, "hour"), (minutes, "minute"), (secs, "second"))
        if value
    ]
    return " ".join(parts) or "0 seconds"


class TimerBook:
    """Every timer the device holds; each method takes ``now`` (wall-clock seconds)."""

    def __init__(
        self,
        policy: RingPolicy | None = None,
        *,
        max_timers: int = 20,
        max_duration_s: float = 24 * 3600.0,
    ) -> None:
        self.policy = policy or RingPolicy()
        self.max_timers = max_timers
        self.max_duration_s = max_duration_s
        self._timers: dict[int, Timer] = {}
        self._missed_at: dict[int, float] = {}
        self._next_id = 1

    # ------------------------------------------------------------------ queries

    def running(self) -> list[Timer]:
        return sorted(self._in(TimerState.RUNNING), key=lambda t: (t.due_at, t.id))

    def ringing(self) -> list[Timer]:
        return sorted(self._in(TimerState.RINGING), key=lambda t: (t.due_at, t.id))

    def missed(self) -> list[Timer]:
        return sorted(self._in(TimerState.MISSED), key=lambda t: (t.due_at, t.id))

    @property
    def is_ringing(self) -> bool:
        return any(t.state is TimerState.RINGING for t in self._timers.values())

    def next_deadline(self) -> float | None:
        """When ``advance`` next has something to do: a timer due or a ring to end."""
        times = [t.due_at for t in self.running()]
        times += [self.policy.ring_until(t.due_at) for t in self.ringing()]
        return min(times, default=None)

    # ------------------------------------------------------------------ changes

    def add(self, duration_s: float, name: str, now: float) -> Timer:
        """Start a timer; TimerError (a sentence to speak) when it cannot be set."""
        if not math.isfinite(duration_s) or duration_s < 1:
            raise TimerError("a timer needs a duration of at least one second")
        if duration_s > self.max_duration_s:
            limit = describe_duration(self.max_duration_s)
            raise TimerError(f"a timer can run for at most {limit}")
        name = " ".join(name.split())
        active = self.running() + self.ringing()
        if len(active) >= self.max_timers:
            raise TimerError(f"there are already {len(active)} timers; cancel one first")
        if name and any(t.name.casefold() == name.casefold() for t in active):
            raise TimerError(f"there is already a timer called {name}")
        timer = Timer(self._next_id, name, float(duration_s), now, now + duration_s)
        self._next_id += 1
        self._timers[timer.id] = timer
        return timer

    def cancel(self, ref: str, now: float) -> tuple[Timer, RingEnded | None]:
        """Cancel by name or number; with no ref, the only active timer. Stops its ring."""
        timer = self.find(ref)
        del self._timers[timer.id]
        ended = None
        if timer.state is TimerState.RINGING:
            ended = RingEnded((timer,), StopReason.CANCELLED)
        return timer, ended

    def find(self, ref: str) -> Timer:
        """The active timer ``ref`` names (name, or its number); TimerError otherwise."""
        active = self.ringing() + self.running()
        ref = " ".join(ref.split())
        if not ref:
            if len(active) == 1:
                return active[0]
            if not active:
                raise TimerError("there are no timers")
            labels = ", ".join(t.label for t in active)
            raise TimerError(f"there are {len(active)} timers ({labels}); say which one")
        for timer in active:
            if timer.name and timer.name.casefold() == ref.casefold():
                return timer
        number = ref.casefold().removeprefix("timer").strip()
        for timer in active:
            if number.isdigit() and int(number) == timer.id:
                return timer
        for timer in active:  # "the 5 minutes timer", as list_timers called it
            if timer.label.casefold() == ref.casefold():
                return timer
        known = ", ".join(t.label for t in active) or "none"
        raise TimerError(f"there is no timer called {ref} (timers: {known})")

    def follow_wall_clock(self, now: float, wall_now: float) -> None:
        """Move wall-anchored timers (restored after a reboot) with a wall-clock step."""
        for timer in list(self._timers.values()):
            if timer.due_wall is not None and timer.state is TimerState.RUNNING:
                self._timers[timer.id] = replace(timer, due_at=timer.due_wall - wall_now + now)

    def advance(self, now: float, wall_now: float | None = None) -> list[TimerEvent]:
        """Fire timers that came due and end rings that lasted ``max_ring_s``.

        With ``wall_now``, wall-anchored timers follow the wall clock first; one that a
        step carried past its whole ring window is missed, not rung for an instant.
        """
        if wall_now is not None:
            self.follow_wall_clock(now, wall_now)
        events: list[TimerEvent] = []
        for timer in self.running():
            if self.policy.ring_until(timer.due_at) <= now:
                missed = replace(timer, state=TimerState.MISSED)
                self._timers[timer.id] = missed
                self._missed_at[timer.id] = now
                events.append(TimerMissed(missed, late_s=now - timer.due_at))
            elif timer.due_at <= now:
                ringing = replace(timer, state=TimerState.RINGING)
                self._timers[timer.id] = ringing
                events.append(TimerFired(ringing, late_s=0.0))
        expired = [t for t in self.ringing() if self.policy.ring_until(t.due_at) <= now]
        for timer in expired:
            del self._timers[timer.id]
        if expired:
            events.append(RingEnded(tuple(expired), StopReason.TIMED_OUT))
        for timer_id, missed_at in list(self._missed_at.items()):
            if now - missed_at >= MISSED_KEEP_S:
                self._timers.pop(timer_id, None)
                del self._missed_at[timer_id]
        return events

    def stop_ringing(self, reason: StopReason) -> RingEnded | None:
        """Silence every ringing timer (as Voice PE does); None when none was ringing."""
        ringing = self.ringing()
        for timer in ringing:
            del self._timers[timer.id]
        return RingEnded(tuple(ringing), reason) if ringing else None

    def acknowledge_missed(self) -> list[Timer]:
        """Forget the missed timers once they were reported; returns them."""
        missed = self.missed()
        for timer in missed:
            del self._timers[timer.id]
            self._missed_at.pop(timer.id, None)
        return missed

    # ------------------------------------------------------------------ persistence

    def to_json(
        self, now: float | None = None, wall_now: float | None = None, boot_id: str = ""
    ) -> dict[str, Any]:
        """The book for the file; without the clocks, the book's clock is the wall clock."""
        offset = 0.0 if now is None or wall_now is None else wall_now - now
        timers = sorted(self._timers.values(), key=lambda t: t.id)
        return {
            "version": STORE_VERSION,
            "boot_id": boot_id,
            "next_id": self._next_id,
            "timers": [t.to_json(offset) for t in timers],
            "missed_at": {str(k): v + offset for k, v in self._missed_at.items()},
        }

    def restore(
        self, data: Any, now: float, wall_now: float | None = None, boot_id: str = ""
    ) -> list[TimerEvent]:
        """Load a saved book at start; timers due meanwhile ring or count as missed.

        Saved in this boot (same ``boot_id``): the monotonic due times, exact. Otherwise
        the wall-clock ones, and those timers stay wall-anchored (see the module doc).
        """
        self._timers.clear()
        self._missed_at.clear()
        if not isinstance(data, dict) or data.get("version") != STORE_VERSION:
            return []
        if wall_now is None:
            wall_now = now
        offset = wall_now - now
        same_boot = bool(boot_id) and data.get("boot_id") == boot_id
        events: list[TimerEvent] = []
        missed_at = data.get("missed_at") if isinstance(data.get("missed_at"), dict) else {}
        for raw in data.get("timers") or []:
            try:
                timer = Timer.from_json(raw)
                due_wall = timer.due_at
                if same_boot:
                    anchored = bool(raw.get("wall_anchored"))
                    timer = replace(
                        timer,
                        due_at=float(raw["due_mono"]),
                        created_at=timer.created_at - offset,
                        due_wall=due_wall if anchored else None,
                    )
                else:  # the wall clock is the only link to a previous boot
                    timer = replace(
                        timer,
                        due_at=due_wall - offset,
                        created_at=timer.created_at - offset,
                        due_wall=due_wall,
                    )
            except (KeyError, TypeError, ValueError):
                continue  # one damaged entry must not lose the others
            self._next_id = max(self._next_id, timer.id + 1)
            if timer.state is TimerState.MISSED:
                self._timers[timer.id] = timer
                self._missed_at[timer.id] = float(missed_at.get(str(timer.id), wall_now)) - offset
            elif timer.due_at > now:
                self._timers[timer.id] = replace(timer, state=TimerState.RUNNING)
            elif now < self.policy.ring_until(timer.due_at):
                ringing = replace(timer, state=TimerState.RINGING)
                self._timers[timer.id] = ringing
                events.append(TimerFired(ringing, late_s=now - timer.due_at))
            else:
                missed = replace(timer, state=TimerState.MISSED)
                self._timers[timer.id] = missed
                self._missed_at[timer.id] = now
                events.append(TimerMissed(missed, late_s=now - timer.due_at))
        next_id = data.get("next_id")
        if isinstance(next_id, int):
            self._next_id = max(self._next_id, next_id)
        return events

    def _in(self, state: TimerState) -> list[Timer]:
        return [t for t in self._timers.values() if t.state is state]

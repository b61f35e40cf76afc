"""Notice a step of the wall clock: NTP correcting a Pi that has no real-time clock.

A Pi boots with its wall clock at the last shutdown (or wherever fake-hwclock left it),
hours or days behind, and NTP steps it once the network is up; an owner may also set it
by hand. Timers and the resumption handle run on the monotonic clock and do not care, but
the wall times in the log jump at that moment, so the daemon says once why they did.

Pure: the caller passes both clocks' readings. Between two readings the wall clock
(CLOCK_REALTIME) and the monotonic one advance together however late the reading comes
(NTP's slewing changes both rates alike; only a step or a suspend moves one alone), so a
change of ``wall - monotonic`` beyond ``threshold_s`` is a step. A leap second (1 s) and
the slow drift that slewing corrects stay under the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

STEP_THRESHOLD_S = 2.0

_UNITS = ((86400.0, "d"), (3600.0, "h"), (60.0, "min"))


@dataclass(frozen=True)
class ClockStep:
    step_s: float  # positive: the wall clock jumped forward

    def describe(self) -> str:
        """'+2.0 d', '-1.0 h', '+5.0 min', '+3.2 s': the step in its largest unit."""
        size = abs(self.step_s)
        sign = "+" if self.step_s >= 0 else "-"
        for unit_s, unit in _UNITS:
            if round(size / unit_s, 1) >= 1.0:  # 3599.98 s (two clocks read apart) is 1.0 h
                return f"{sign}{size / unit_s:.1f} {unit}"
        return f"{sign}{size:.1f} s"


class ClockStepDetector:
    """Fed (monotonic, wall) readings; returns a ``ClockStep`` on the reading after one."""

    def __init__(self, threshold_s: float = STEP_THRESHOLD_S) -> None:
        if threshold_s <= 0:
            raise ValueError("threshold_s must be positive")
        self.threshold_s = threshold_s
        self._offset: float | None = None  # wall - monotonic at the last reading

    def observe(self, now: float, wall_now: float) -> ClockStep | None:
        offset = wall_now - now
        previous, self._offset = self._offset, offset
        if previous is None or abs(offset - previous) < self.threshold_s:
            return None
        return ClockStep(offset - previous)

"""One outage, told once: which connection failures are worth a log line.

Pure: no I/O, times passed in. A device that cannot reach the service retries with
backoff (every 30 s at most, for hours if the router is down); a WARNING per attempt
would bury everything else in the journal and says nothing new after the first. So
within one outage (from the first failure to the next setupComplete) each distinct
failure is logged once; a different one (the network came back but the certificate is
expired) is news and is logged once too; the recovery is logged once with how long it
took. The repeats still go to DEBUG, and STATUS= shows the latest at every attempt.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Recovery:
    """A connection is up again after ``failures`` failed attempts over ``outage_s``."""

    outage_s: float
    failures: int


@dataclass
class OutageLog:
    """Tracks the current outage; see the module docstring."""

    started_at: float | None = None
    failures: int = 0
    _told: set[str] = field(default_factory=set)

    def failed(self, reason: str, now: float) -> bool:
        """A failure with this reason: True if it is news (log it), False for a repeat."""
        if self.started_at is None:
            self.started_at = now
        self.failures += 1
        if reason in self._told:
            return False
        self._told.add(reason)
        return True

    def connected(self, now: float) -> Recovery | None:
        """A connection is up: the outage (if any) is over."""
        if self.started_at is None:
            return None
        recovery = Recovery(max(0.0, now - self.started_at), self.failures)
        self.started_at = None
        self.failures = 0
        self._told.clear()
        return recovery

"""When to feed the systemd watchdog: only while the appliance is really working.

Pure: no clock, no I/O; the daemon passes ``now`` (monotonic seconds) and two health
signals. A process that is alive but deaf (the capture thread wedged inside ALSA, the
event loop blocked) must stop pinging, so systemd's ``WatchdogSec=`` restarts it:

- the capture counter (samples delivered by the mic callback) must have advanced
  within ``stall_s``;
- the event loop's heartbeat (a timestamp a loop task refreshes every second or so)
  must be younger than ``heartbeat_max_age_s``. This matters when the decision runs
  off the loop (a helper thread); on the loop itself a blocked loop simply pings no
  more.

When the daemon knows capture is deliberately absent (the audio device is gone and is
being reopened with backoff) it passes ``capture_expected=False``: restarting the whole
service would not bring a USB mic back, and it would burn systemd's start limit.
The same goes for mute if the daemon closes the capture stream while muted. Capture
then gets a fresh ``stall_s`` of grace when it is expected again.
"""

from __future__ import annotations


class WatchdogGate:
    """Decides, on each watchdog tick, whether ``WATCHDOG=1`` may be sent."""

    def __init__(self, stall_s: float, heartbeat_max_age_s: float | None = None) -> None:
        if stall_s <= 0:
            raise ValueError("stall_s must be positive")
        self.stall_s = stall_s
        self.heartbeat_max_age_s = stall_s if heartbeat_max_age_s is None else heartbeat_max_age_s
        self._last_count: int | None = None
        self._advanced_at = 0.0
        self.refusal: str = ""  # why the last call said no ("" after a yes)

    def should_ping(
        self,
        now: float,
        captured_samples: int,
        loop_heartbeat_at: float,
        *,
        capture_expected: bool = True,
    ) -> bool:
        """True while capture advances (or is not expected) and the loop is alive."""
        # Any change counts as progress: a reopened stream may restart its counter.
        if not capture_expected or captured_samples != self._last_count:
            self._last_count = captured_samples
            self._advanced_at = now
        heartbeat_age = now - loop_heartbeat_at
        if heartbeat_age > self.heartbeat_max_age_s:
            self.refusal = f"event loop silent for {heartbeat_age:.1f} s"
            return False
        stalled_for = now - self._advanced_at
        if stalled_for > self.stall_s:
            self.refusal = f"no audio captured for {stalled_for:.1f} s"
            return False
        self.refusal = ""
        return True

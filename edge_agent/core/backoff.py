"""Reconnect policy for the Live session: backoff delays and a failure classifier.

Pure: no I/O, no clock. Time comes in as ``now`` (monotonic seconds) and randomness from
an injected ``random() -> [0, 1)`` so tests can pin every delay.

Why a classifier: the Live API reports an auth problem the same way (a websocket close)
as a flaky network, but retrying a rejected key quickly only burns quota and floods the
journal. So failures are sorted into:

- RETRY: network errors, 1006 (no close frame), 1011 (internal / deadline / keepalive),
  other close codes, refused upgrades with a transient HTTP status. Exponential backoff
  with full jitter and a cap; the attempt counter resets once a connection has stayed up
  for ``stable_after_s``.
- FATAL: 1007 "API key not valid", 1008 (missing key, permission, policy), HTTP 400/401/
  403/404 on the upgrade, no key at all. Nothing will change until the config does, so it
  is retried only every ``fatal_retry_delay_s`` (or at once after ``config_changed()``).
- DROP_HANDLE: any other 1007 (stale resumption handle, bad setup). The first one drops
  the handle and retries with a fresh session (at once when it was refused while resuming);
  a second one in a row means the setup itself is bad: FATAL.
- HANDOVER: 1008 "The operation was aborted." after a goAway is the server ending a
  connection on schedule, not a failure: reconnect at once, no backoff.
- ABANDON_HANDLE: resuming while the server still holds the old connection open gets
  1011 during setup (e.g. after a Wi-Fi roam the client vanished without a close, and
  the server has not noticed yet). That is retried with backoff like any 1011, but after
  ``BUSY_RESUME_LIMIT`` such refusals with no successful setup in between the handle is
  dropped and a fresh session starts at once: a conversation that cannot be resumed is
  worth less than a device that answers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from edge_agent.config import ReconnectConfig

# Websocket close codes seen from the Live API.
CLOSE_ABNORMAL = 1006
CLOSE_INVALID_ARGUMENT = 1007
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011

# A handover from a connection younger than this is suspicious (the real service sends
# goAway after about 9 minutes): it reconnects with backoff, so a server that keeps
# sending goAway right after setup cannot make the client spin.
MIN_HANDOVER_UPTIME_S = 10.0

# Resuming setups refused with 1011 (old connection still open) before the handle goes.
BUSY_RESUME_LIMIT = 3

# Kinds whose reason already says what happened in plain words.
_SELF_EXPLAINING = frozenset({"network", "setup_timeout"})

# HTTP statuses on a refused websocket upgrade that a retry will not fix.
_FATAL_HTTP = frozenset({400, 401, 403, 404})


class FailureKind(StrEnum):
    NETWORK = "network"  # OSError, TLS, handshake timeout: no close frame
    CLOSED = "closed"  # the server closed the websocket with a code
    HTTP = "http"  # the websocket upgrade was refused with an HTTP status
    SETUP_TIMEOUT = "setup_timeout"  # connected, but no setupComplete in time
    PROTOCOL = "protocol"  # the server keeps sending frames we cannot parse
    NO_KEY = "no_key"  # the key provider has no key: nothing to connect with


class Verdict(StrEnum):
    RETRY = "retry"
    HANDOVER = "handover"
    DROP_HANDLE = "drop_handle"
    ABANDON_HANDLE = "abandon_handle"
    FATAL = "fatal"


@dataclass(frozen=True)
class Failure:
    """Why a connection attempt or a live connection ended."""

    kind: FailureKind
    code: int | None = None  # close code or HTTP status
    reason: str = ""
    during_setup: bool = False  # before setupComplete arrived
    resuming: bool = False  # this connection's setup offered a resumption handle
    after_go_away: bool = False  # the server had announced goAway on this connection

    def describe(self) -> str:
        """One short human line (no secrets: reasons come from the server, not from us)."""
        if self.kind is FailureKind.CLOSED:
            text = f"closed {self.code}"
        elif self.kind is FailureKind.HTTP:
            text = f"HTTP {self.code} on connect"
        elif self.kind in _SELF_EXPLAINING and self.reason:
            return self.reason  # already a sentence (live.failures words these)
        else:
            text = self.kind.value.replace("_", " ")
        if self.reason:
            text += f": {self.reason}"
        return text


def is_busy_resume(failure: Failure) -> bool:
    """A 1011 while resuming, before setupComplete: the server may still hold the session."""
    return (
        failure.kind is FailureKind.CLOSED
        and failure.code == CLOSE_INTERNAL
        and failure.during_setup
        and failure.resuming
    )


def _is_key_rejection(reason: str) -> bool:
    lowered = reason.lower()
    return "api key" in lowered or "api_key" in lowered


def classify(failure: Failure, invalid_streak: int = 0) -> Verdict:
    """Sort one failure; ``invalid_streak`` counts earlier non-key 1007s in a row."""
    if failure.kind is FailureKind.NO_KEY:
        return Verdict.FATAL
    if failure.kind is FailureKind.HTTP:
        return Verdict.FATAL if failure.code in _FATAL_HTTP else Verdict.RETRY
    if failure.kind is not FailureKind.CLOSED:
        return Verdict.RETRY
    code = failure.code
    if code == CLOSE_POLICY:
        if failure.after_go_away and "aborted" in failure.reason.lower():
            return Verdict.HANDOVER
        return Verdict.FATAL
    if code == CLOSE_INVALID_ARGUMENT:
        if _is_key_rejection(failure.reason):
            return Verdict.FATAL
        return Verdict.DROP_HANDLE if invalid_streak == 0 else Verdict.FATAL
    return Verdict.RETRY


@dataclass(frozen=True)
class Decision:
    """What to do after a failure."""

    verdict: Verdict
    delay_s: float
    fatal: bool
    drop_handle: bool
    reason: str


def capped_exponential(attempt: int, initial_s: float, max_s: float, multiplier: float) -> float:
    """``min(max_s, initial_s * multiplier**attempt)``, without jitter.

    The one exponential shape: :class:`Backoff` adds jitter on top for the network (a fleet
    must not reconnect in step); a local sound device reopens on it as is (one device, one
    client, nothing to spread). Large attempt counts never overflow a float.
    """
    if multiplier <= 1.0:
        return min(max_s, initial_s)
    if max_s <= initial_s:
        return max_s
    steps_to_cap = math.log(max_s / initial_s) / math.log(multiplier)  # compare exponents
    if attempt >= steps_to_cap:
        return max_s
    return min(max_s, initial_s * multiplier**attempt)


class Backoff:
    """Exponential backoff with full jitter and a cap.

    delay(n) = min(max, initial * multiplier**n) * (1 - jitter * random()); with jitter 1
    that is AWS "full jitter": uniform in (0, cap], which spreads a fleet's reconnects.
    """

    def __init__(self, cfg: ReconnectConfig, random: Callable[[], float]) -> None:
        self._cfg = cfg
        self._random = random

    def base_delay(self, attempt: int) -> float:
        cfg = self._cfg
        return capped_exponential(attempt, cfg.initial_delay_s, cfg.max_delay_s, cfg.multiplier)

    def delay(self, attempt: int) -> float:
        r = min(max(self._random(), 0.0), 1.0)
        return self.base_delay(attempt) * (1.0 - self._cfg.jitter * r)


class ReconnectPolicy:
    """Decides the delay and mode of the next connection attempt; pure and stateful.

    Call ``connected(now)`` when setupComplete arrives and ``failed(failure, now)`` when an
    attempt or a live connection ends unexpectedly.
    """

    def __init__(self, cfg: ReconnectConfig, random: Callable[[], float]) -> None:
        self._cfg = cfg
        self._backoff = Backoff(cfg, random)
        self._random = random
        self.attempts = 0  # failures since the last stable connection
        self.invalid_streak = 0  # non-key 1007s since the last successful setup
        self.busy_resumes = 0  # resumes refused with 1011 since the last successful setup
        self.fatal = False
        self._connected_at: float | None = None

    @property
    def cfg(self) -> ReconnectConfig:
        return self._cfg

    def connected(self, now: float) -> None:
        """setupComplete arrived: the setup (key, model, handle) is good."""
        self._connected_at = now
        self.fatal = False
        self.invalid_streak = 0
        self.busy_resumes = 0

    def stable(self, now: float) -> bool:
        """True once the current connection has been up for ``stable_after_s``."""
        return (
            self._connected_at is not None and now - self._connected_at >= self._cfg.stable_after_s
        )

    def disconnected(self, now: float) -> None:
        """A planned close (idle close): keep the counters unless it was stable."""
        if self.stable(now):
            self.attempts = 0
        self._connected_at = None

    def handed_over(self, now: float) -> float:
        """A goAway handover: the delay before resuming (0 unless it keeps happening early)."""
        quick = self._connected_at is None or now - self._connected_at < MIN_HANDOVER_UPTIME_S
        self.disconnected(now)
        if not quick:
            return 0.0
        delay = self._backoff.delay(self.attempts)
        self.attempts += 1
        return delay

    def failed(self, failure: Failure, now: float) -> Decision:
        verdict = classify(failure, self.invalid_streak)
        reason = failure.describe()
        if verdict is Verdict.HANDOVER:
            return Decision(verdict, self.handed_over(now), False, False, reason)
        if self.stable(now):
            self.attempts = 0
        self._connected_at = None
        if verdict is Verdict.FATAL:
            self.fatal = True
            return Decision(verdict, self._cfg.fatal_retry_delay_s, True, False, reason)
        if verdict is Verdict.RETRY and is_busy_resume(failure):
            self.busy_resumes += 1
            if self.busy_resumes >= BUSY_RESUME_LIMIT:
                self.busy_resumes = 0
                self.attempts += 1
                return Decision(Verdict.ABANDON_HANDLE, 0.0, False, True, reason)
        if verdict is Verdict.DROP_HANDLE:
            self.busy_resumes = 0
            self.invalid_streak += 1
            refused_on_resume = failure.resuming and failure.during_setup
            delay = 0.0 if refused_on_resume else self._backoff.delay(self.attempts)
            self.attempts += 1
            return Decision(verdict, delay, False, True, reason)
        delay = self._backoff.delay(self.attempts)
        self.attempts += 1
        return Decision(verdict, delay, False, False, reason)

    def config_changed(self, cfg: ReconnectConfig | None = None) -> None:
        """A reload may have fixed the key or setup: leave the fatal state, start over."""
        if cfg is not None:
            self._cfg = cfg
            self._backoff = Backoff(cfg, self._random)
        self.fatal = False
        self.attempts = 0
        self.invalid_streak = 0
        self.busy_resumes = 0

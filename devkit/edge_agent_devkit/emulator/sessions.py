"""Logical sessions, resumption handles, and how long a session may live.

A handle names a snapshot of a logical session (its consumed audio and turns at the end of
a user turn's input). Resuming restores that snapshot on a new connection. As on the real
service: an unknown or expired handle closes with 1007, and a handle whose session is
still served by an open connection closes with 1011.

Session lifetime, as the service documents it: without context window compression an
audio-only session ends after 15 minutes (`session_limit_s`, shortened by soak runs), and
its handles are refused from then on; with compression the session lives on, and its
context is cut back to the target each time it passes the trigger. Context is counted
from the usage each turn reports (an approximation: the service counts the whole history).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .protocol import (
    CLOSE_INTERNAL,
    CLOSE_INVALID_ARGUMENT,
    REASON_INTERNAL,
    REASON_STALE_HANDLE,
    ProtocolError,
)
from .record import DEFAULT_MAX_HANDLES, EmulatorRecord, SessionRecord, Snapshot

logger = logging.getLogger(__name__)


# The service's defaults when contextWindowCompression names no numbers: trigger at 80 %
# of the 128k context, slide back to half the trigger (public docs).
DEFAULT_TRIGGER_TOKENS = 102_400
DEFAULT_SESSION_LIMIT_S = 15 * 60.0


@dataclass(frozen=True)
class _Issued:
    session: SessionRecord
    snapshot: Snapshot
    issued_at: float


@dataclass
class _Life:
    """How long a logical session has lived and how full its context is."""

    started_at: float
    trigger_tokens: int | None = None  # None: no compression, the session limit applies
    target_tokens: int = 0
    context_tokens: int = 0
    compressions: int = 0


class SessionRegistry:
    """Creates sessions, issues and resolves handles, tracks which connection serves what."""

    def __init__(
        self,
        record: EmulatorRecord,
        *,
        handle_ttl_s: float,
        max_audio_bytes: int | None = None,
        max_handles: int = DEFAULT_MAX_HANDLES,
        session_limit_s: float | None = DEFAULT_SESSION_LIMIT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._record = record
        self._ttl = handle_ttl_s
        self._max_audio = max_audio_bytes
        self._max_handles = max_handles
        self._clock = clock
        self._limit_s = session_limit_s
        self._handles: OrderedDict[str, _Issued] = OrderedDict()
        self._lives: dict[str, _Life] = {}
        self._ended: set[str] = set()
        self.compressions = 0  # context compressions, every session together
        self.sessions_ended = 0  # sessions ended at the session limit
        # session_id -> predicate "is the connection serving it still open?"
        self._attached: dict[str, Callable[[], bool]] = {}

    def new_session(self) -> SessionRecord:
        session = SessionRecord(max_audio_bytes=self._max_audio)
        self._record.sessions.append(session)
        self._lives[session.session_id] = _Life(started_at=self._clock())
        return session

    def issue_handle(self, session: SessionRecord, snapshot: Snapshot) -> str:
        handle = "emu-" + secrets.token_urlsafe(18)
        self._handles[handle] = _Issued(session, snapshot, self._clock())
        # Oldest first: drop beyond the bound (they would have expired long before).
        while len(self._handles) > self._max_handles:
            self._handles.popitem(last=False)
        return handle

    def resolve(self, handle: str) -> tuple[SessionRecord, Snapshot]:
        """Session and snapshot of a handle; ProtocolError(1007) when unknown or expired."""
        issued = self._handles.get(handle)
        if issued is not None:
            left = self.session_time_left(issued.session)
            if left is not None and left <= 0:
                self.end_session(issued.session)  # it ran out while no connection served it
        if issued is None or issued.session.session_id in self._ended:
            raise ProtocolError(CLOSE_INVALID_ARGUMENT, REASON_STALE_HANDLE)
        if self._clock() - issued.issued_at > self._ttl:
            del self._handles[handle]
            raise ProtocolError(CLOSE_INVALID_ARGUMENT, REASON_STALE_HANDLE)
        return issued.session, issued.snapshot

    def attach(self, session: SessionRecord, is_open: Callable[[], bool]) -> None:
        """Mark `session` as served; ProtocolError(1011) while another open connection has it."""
        current = self._attached.get(session.session_id)
        if current is not None and current():
            raise ProtocolError(CLOSE_INTERNAL, REASON_INTERNAL)
        self._attached[session.session_id] = is_open

    def detach(self, session: SessionRecord, is_open: Callable[[], bool]) -> None:
        if self._attached.get(session.session_id) is is_open:
            del self._attached[session.session_id]

    # ---- lifetime and context ----

    def configure_compression(self, session: SessionRecord, setup_value: object) -> None:
        """What this connection's setup asked for: `contextWindowCompression` or nothing."""
        life = self._life(session)
        if not isinstance(setup_value, dict):
            life.trigger_tokens = None
            return
        window = setup_value.get("slidingWindow")
        trigger = _tokens(setup_value.get("triggerTokens")) or DEFAULT_TRIGGER_TOKENS
        target = _tokens(window.get("targetTokens")) if isinstance(window, dict) else None
        life.trigger_tokens = trigger
        life.target_tokens = target if target is not None and target < trigger else trigger // 2

    def add_context_tokens(self, session: SessionRecord, tokens: int) -> bool:
        """A turn's usage joins the context; True when that set off a compression."""
        life = self._life(session)
        life.context_tokens += max(0, tokens)
        if life.trigger_tokens is None or life.context_tokens <= life.trigger_tokens:
            return False
        life.context_tokens = life.target_tokens
        life.compressions += 1
        self.compressions += 1
        logger.info(
            "session %s: context compressed (%d so far)", session.session_id, life.compressions
        )
        return True

    def session_time_left(self, session: SessionRecord) -> float | None:
        """Seconds until the session limit ends `session`; None when it has no limit."""
        life = self._life(session)
        if self._limit_s is None or life.trigger_tokens is not None:
            return None
        return life.started_at + self._limit_s - self._clock()

    def end_session(self, session: SessionRecord) -> None:
        """The session limit was reached: its handles are refused from now on."""
        if session.session_id not in self._ended:
            self._ended.add(session.session_id)
            self.sessions_ended += 1
            logger.info("session %s: ended at the session limit", session.session_id)

    def forget_handles(self) -> int:
        """Every handle issued so far becomes unknown (a resume is refused with 1007)."""
        count = len(self._handles)
        self._handles.clear()
        return count

    def stats(self) -> dict[str, int]:
        return {
            "sessions": len(self._lives),
            "handles": len(self._handles),
            "compressions": self.compressions,
            "sessions_ended": self.sessions_ended,
        }

    def _life(self, session: SessionRecord) -> _Life:
        life = self._lives.get(session.session_id)
        if life is None:  # a session made outside new_session (tests)
            life = self._lives[session.session_id] = _Life(started_at=self._clock())
        return life


def _tokens(value: object) -> int | None:
    """A token count from setup JSON (int64 fields may arrive as strings)."""
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None

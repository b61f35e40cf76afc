"""Logical sessions and resumption handles.

A handle names a snapshot of a logical session (its consumed audio and turns at the end of
a user turn's input). Resuming restores that snapshot on a new connection. As on the real
service: an unknown or expired handle closes with 1007, and a handle whose session is
still served by an open connection closes with 1011.
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


@dataclass(frozen=True)
class _Issued:
    session: SessionRecord
    snapshot: Snapshot
    issued_at: float


class SessionRegistry:
    """Creates sessions, issues and resolves handles, tracks which connection serves what."""

    def __init__(
        self,
        record: EmulatorRecord,
        *,
        handle_ttl_s: float,
        max_audio_bytes: int | None = None,
        max_handles: int = DEFAULT_MAX_HANDLES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._record = record
        self._ttl = handle_ttl_s
        self._max_audio = max_audio_bytes
        self._max_handles = max_handles
        self._clock = clock
        self._handles: OrderedDict[str, _Issued] = OrderedDict()
        # session_id -> predicate "is the connection serving it still open?"
        self._attached: dict[str, Callable[[], bool]] = {}

    def new_session(self) -> SessionRecord:
        session = SessionRecord(max_audio_bytes=self._max_audio)
        self._record.sessions.append(session)
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
        if issued is None:
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

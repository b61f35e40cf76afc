"""The uplink log: what the user said that the server may not remember yet.

Pure: no I/O, no clock. One ordered log serves two jobs:

1. Offline buffer. Everything the daemon sends (audio, activity markers, text turns) is
   appended here first; a cursor marks what has gone out on the current connection, so
   audio spoken while (re)connecting is sent as soon as setup completes.
2. Replay log. The Developer API has no "last consumed message index" (``transparent``
   is Vertex only), so zero loss across a drop or goAway is the client's job. Per the
   contract, a resumption handle received after the turnComplete of user turn N restores
   the conversation *as of the end marker of turn N* (activityEnd / audioStreamEnd / a
   text turn). Entries after that marker are kept and re-sent on the new connection.

Bookkeeping: every entry carries its *segment*, the number of end markers appended
before it, so the end marker of turn k has segment k-1 and turn k+1's audio has
segment k. The k-th turnComplete answers the k-th end marker (replies come in order,
and an interrupted reply still ends with a turnComplete), so when a handle arrives it
covers ``turns_completed`` markers and every entry with a smaller segment can go.

Resume (handle accepted): the server rewinds to the handle's marker, so
``turns_completed`` rewinds too and the whole log is re-sent.

Fresh session (no handle, or the handle was refused): the old context is gone and
cannot be rebuilt. Policy: re-send the turns that were never answered (the question
whose reply was lost, the utterance in progress), drop the turns that were answered
(re-sending them would make the model answer them aloud a second time).

Bound: at most ``max_audio_bytes`` of audio and ``max_entries`` entries. Overflow policy:
drop the OLDEST entries (the newest speech matters most), counted in
``dropped_audio_bytes``; if a dropped entry had not been sent yet, that speech is lost
and is also counted in ``dropped_unsent_audio_bytes``.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

PCM16K_BYTES_PER_S = 16_000 * 2


class UplinkKind(StrEnum):
    AUDIO = "audio"  # realtimeInput.audio, 16 kHz s16le
    ACTIVITY_START = "activity_start"  # realtimeInput.activityStart
    ACTIVITY_END = "activity_end"  # realtimeInput.activityEnd (ends the user turn)
    AUDIO_STREAM_END = "audio_stream_end"  # realtimeInput.audioStreamEnd (server VAD)
    TEXT_TURN = "text_turn"  # clientContent with one user text part and turnComplete


_END_MARKERS = frozenset(
    {UplinkKind.ACTIVITY_END, UplinkKind.AUDIO_STREAM_END, UplinkKind.TEXT_TURN}
)


@dataclass(frozen=True, slots=True)
class UplinkMessage:
    kind: UplinkKind
    audio: bytes = b""
    text: str = ""

    @property
    def ends_turn(self) -> bool:
        return self.kind in _END_MARKERS


@dataclass(frozen=True, slots=True)
class _Entry:
    seq: int
    segment: int
    message: UplinkMessage


@dataclass(frozen=True)
class ReplayStats:
    entries: int
    audio_bytes: int
    unsent: int
    markers: int
    turns_completed: int
    covered: int
    dropped_entries: int
    dropped_audio_bytes: int
    dropped_unsent_audio_bytes: int


class ReplayLog:
    """Bounded, ordered uplink log with a send cursor; see the module docstring."""

    def __init__(self, max_audio_bytes: int, max_entries: int = 100_000) -> None:
        if max_audio_bytes <= 0 or max_entries <= 0:
            raise ValueError("replay log bounds must be positive")
        self.max_audio_bytes = max_audio_bytes
        self.max_entries = max_entries
        self._entries: deque[_Entry] = deque()
        self._next_seq = 0
        self._cursor = 0  # seq of the next entry to send on the current connection
        self._audio_bytes = 0
        self._markers = 0  # end markers appended (relative to this log's origin)
        self.turns_completed = 0
        self.covered = 0  # end markers covered by the latest handle
        self.dropped_entries = 0
        self.dropped_audio_bytes = 0
        self.dropped_unsent_audio_bytes = 0

    @classmethod
    def for_seconds(cls, max_audio_s: float) -> ReplayLog:
        """A log holding ``max_audio_s`` of 16 kHz mono s16le audio (10 ms chunks or more)."""
        max_bytes = max(2, int(max_audio_s * PCM16K_BYTES_PER_S) // 2 * 2)
        return cls(max_bytes, max_entries=int(max_audio_s * 100) * 2 + 1_000)

    # ---- appending and sending -------------------------------------------------------

    def append(self, message: UplinkMessage) -> None:
        self._entries.append(_Entry(self._next_seq, self._markers, message))
        self._next_seq += 1
        self._audio_bytes += len(message.audio)
        if message.ends_turn:
            self._markers += 1
        while self._entries and (
            self._audio_bytes > self.max_audio_bytes or len(self._entries) > self.max_entries
        ):
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        entry = self._entries.popleft()
        size = len(entry.message.audio)
        self._audio_bytes -= size
        self.dropped_entries += 1
        self.dropped_audio_bytes += size
        if entry.seq >= self._cursor:
            self.dropped_unsent_audio_bytes += size
            self._cursor = entry.seq + 1

    def peek_unsent(self, coalesce_audio_bytes: int = 0) -> tuple[int, UplinkMessage] | None:
        """The next message to send and the seq to pass to ``mark_sent``; None: all sent.

        With ``coalesce_audio_bytes`` > 0, a backlog of consecutive audio entries (after a
        reconnect, or while the socket was busy) comes back as one message of at most that
        many bytes (at least one entry): far fewer sends, the same bytes in the same order.
        """
        entry = self._entry_at_cursor()
        if entry is None:
            return None
        if entry.message.kind is not UplinkKind.AUDIO or coalesce_audio_bytes <= 0:
            return entry.seq, entry.message
        index = entry.seq - self._entries[0].seq
        parts = [entry.message.audio]
        size = len(entry.message.audio)
        last = entry.seq
        for follower in itertools.islice(self._entries, index + 1, None):
            audio = follower.message.audio
            if follower.message.kind is not UplinkKind.AUDIO:
                break
            if size + len(audio) > coalesce_audio_bytes:
                break
            parts.append(audio)
            size += len(audio)
            last = follower.seq
        if len(parts) == 1:
            return entry.seq, entry.message
        return last, UplinkMessage(UplinkKind.AUDIO, audio=b"".join(parts))

    def mark_sent(self, seq: int) -> None:
        """Everything up to ``seq`` (from peek_unsent) went out on the wire.

        Takes the seq, not "the current entry", because overflow may drop entries while a
        send is in flight.
        """
        self._cursor = max(self._cursor, seq + 1)

    def _entry_at_cursor(self) -> _Entry | None:
        if not self._entries:
            return None
        first = self._entries[0].seq
        self._cursor = max(self._cursor, first)
        index = self._cursor - first
        return self._entries[index] if index < len(self._entries) else None

    @property
    def unsent(self) -> int:
        if not self._entries:
            return 0
        return max(0, self._entries[-1].seq + 1 - max(self._cursor, self._entries[0].seq))

    @property
    def markers_on_wire(self) -> int:
        """End markers sent on the current connection (or covered before it)."""
        entry = self._entry_at_cursor()
        return entry.segment if entry is not None else self._markers

    # ---- what the server tells us ----------------------------------------------------

    def turn_completed(self, answers_all: bool = False) -> None:
        """A turnComplete arrived: it answers the oldest unanswered end marker.

        ``answers_all``: with the server's own VAD, the server (not our markers) decides
        where turns end, so a turnComplete is taken to answer every marker sent so far.
        """
        on_wire = self.markers_on_wire
        self.turns_completed = on_wire if answers_all else min(self.turns_completed + 1, on_wire)

    def handle_received(self) -> None:
        """A usable handle arrived: it covers every answered end marker."""
        self.covered = max(self.covered, self.turns_completed)
        self._trim_covered()

    def _trim_covered(self) -> None:
        while self._entries and self._entries[0].segment < self.covered:
            entry = self._entries.popleft()
            self._audio_bytes -= len(entry.message.audio)

    @property
    def reply_owed(self) -> bool:
        """An end marker went out whose turnComplete has not arrived yet."""
        return self.turns_completed < self.markers_on_wire

    @property
    def settled(self) -> bool:
        """Every sent turn is answered and covered by a handle: a handover loses nothing."""
        return not self.reply_owed and self.covered >= self.turns_completed

    # ---- new connections --------------------------------------------------------------

    def rewind_for_resume(self) -> int:
        """The handle was accepted: the server is back at ``covered``; re-send everything."""
        self.turns_completed = self.covered
        self._trim_covered()
        self._cursor = self._entries[0].seq if self._entries else self._next_seq
        return len(self._entries)

    def rewind_for_fresh_session(self) -> int:
        """A fresh session: keep only unanswered turns (see module docstring); re-send them."""
        self.covered = self.turns_completed
        self._trim_covered()
        self._cursor = self._entries[0].seq if self._entries else self._next_seq
        return len(self._entries)

    def clear(self) -> None:
        """The conversation was closed on purpose: forget everything not yet covered."""
        self._entries.clear()
        self._audio_bytes = 0
        self._cursor = self._next_seq
        self._markers = 0
        self.turns_completed = 0
        self.covered = 0

    def stats(self) -> ReplayStats:
        return ReplayStats(
            entries=len(self._entries),
            audio_bytes=self._audio_bytes,
            unsent=self.unsent,
            markers=self._markers,
            turns_completed=self.turns_completed,
            covered=self.covered,
            dropped_entries=self.dropped_entries,
            dropped_audio_bytes=self.dropped_audio_bytes,
            dropped_unsent_audio_bytes=self.dropped_unsent_audio_bytes,
        )

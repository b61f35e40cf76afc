"""The uplink log: what the user said that the server may not remember yet.

Pure: no I/O, no clock. One ordered log serves two jobs:

1. Offline buffer. Everything the daemon sends (audio and activity markers) is
   appended here first; a cursor marks what has gone out on the current connection, so
   audio spoken while (re)connecting is sent as soon as setup completes.
2. Replay log. The Developer API has no "last consumed message index" (``transparent``
   is Vertex only), so zero loss across a drop or goAway is the client's job. Per the
   contract, a resumption handle received after the turnComplete of user turn N restores
   the conversation *as of the end marker of turn N*. Entries after that marker are kept
   and re-sent on the new connection.

End markers are the messages that always get exactly one turnComplete: activityEnd.
audioStreamEnd is not one: it only flushes speech the server's VAD has not
ended yet, so after the VAD ended the turn itself it gets no reply at all.

Bookkeeping is by sequence number, not by counting markers, so an answer is only ever
matched with a marker that really went out on this connection:
- ``mark_sent`` queues every end marker that goes out as "awaiting" its turnComplete;
- a turnComplete answers the oldest awaited marker (replies come in order, and an
  interrupted reply still ends with a turnComplete): entries up to that marker are
  *answered*. With the server's own VAD (``answers_all``) the server, not our markers,
  ends turns, so a turnComplete answers everything sent so far;
- a handle *covers* every answered entry: they can go.

Resume (handle accepted): the server rewinds to the handle, so the answered boundary
rewinds to the covered one and the whole log is re-sent.

Fresh session (no handle, or the handle was refused): the old context is gone and
cannot be rebuilt. Policy: re-send the turns that were never answered (the question
whose reply was lost, the utterance in progress), drop the turns that were answered
(re-sending them would make the model answer them aloud a second time).

Bound: at most ``max_audio_bytes`` of audio and ``max_entries`` entries. Overflow policy:
drop the OLDEST WHOLE TURN, from its first entry through its end marker (the newest
speech matters most, and half a turn would unbalance the markers: an activityEnd whose
activityStart was dropped is ignored by the server and never answered). When the log
holds no end marker (one long turn in progress, or server-VAD audio) the oldest audio
goes instead, keeping the turn's activityStart in front of what is left. Dropped audio is
counted in ``dropped_audio_bytes``; if it had not been sent yet, that speech is lost and
is also counted in ``dropped_unsent_audio_bytes``.
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


# Messages that always get exactly one turnComplete (see the module docstring).
_END_MARKERS = frozenset({UplinkKind.ACTIVITY_END})


@dataclass(frozen=True, slots=True)
class UplinkMessage:
    kind: UplinkKind
    audio: bytes = b""

    @property
    def ends_turn(self) -> bool:
        return self.kind in _END_MARKERS


@dataclass(frozen=True, slots=True)
class _Entry:
    seq: int
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
        self._entries: deque[_Entry] = deque()  # consecutive seqs
        self._next_seq = 0
        self._cursor = 0  # seq of the next entry to send on the current connection
        self._audio_bytes = 0
        self._marker_seqs: deque[int] = deque()  # end markers in the log, oldest first
        self._awaiting: deque[int] = deque()  # end markers sent, turnComplete not yet
        self._answered_seq = 0  # entries below this seq belong to answered turns
        self._covered_seq = 0  # entries below this seq are covered by the latest handle
        # Counters for status and tests (relative to this log's origin).
        self._markers = 0  # end markers appended
        self.turns_completed = 0  # turnCompletes that answered something we sent
        self.covered = 0  # of those, how many the latest handle covers
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
        seq = self._next_seq
        self._next_seq += 1
        self._entries.append(_Entry(seq, message))
        self._audio_bytes += len(message.audio)
        if message.ends_turn:
            self._markers += 1
            self._marker_seqs.append(seq)
        while self._entries and (
            self._audio_bytes > self.max_audio_bytes or len(self._entries) > self.max_entries
        ):
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        """Overflow: drop the oldest whole turn, or else the oldest audio (module doc)."""
        if self._marker_seqs:
            last = self._marker_seqs.popleft()
            while self._entries and self._entries[0].seq <= last:
                self._count_dropped(self._entries.popleft())
        else:
            first = self._entries.popleft()
            if first.message.kind is UplinkKind.ACTIVITY_START and self._entries:
                # Keep the turn open: the start moves onto the dropped entry's seq.
                victim = self._entries.popleft()
                start_sent = first.seq < self._cursor
                self._count_dropped(victim)
                self._entries.appendleft(_Entry(victim.seq, first.message))
                if start_sent:
                    self._cursor = max(self._cursor, victim.seq + 1)
            else:
                self._count_dropped(first)
        self._cursor = max(self._cursor, self._first_seq())

    def _count_dropped(self, entry: _Entry) -> None:
        size = len(entry.message.audio)
        self._audio_bytes -= size
        self.dropped_entries += 1
        self.dropped_audio_bytes += size
        if entry.seq >= self._cursor:
            self.dropped_unsent_audio_bytes += size

    def _first_seq(self) -> int:
        return self._entries[0].seq if self._entries else self._next_seq

    def _sent_upto(self) -> int:
        """Seq of the first entry not sent on this connection (dropped ones count as sent)."""
        return max(self._cursor, self._first_seq())

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
        cursor = self._sent_upto()
        if seq < cursor:
            return
        # End markers newly on the wire now await their turnComplete (oldest first).
        newly = [m for m in _tail_from(self._marker_seqs, cursor) if m <= seq]
        self._awaiting.extend(newly)
        self._cursor = seq + 1

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

    # ---- what the server tells us ----------------------------------------------------

    def turn_completed(self, answers_all: bool = False) -> None:
        """A turnComplete arrived: it answers the oldest end marker awaiting one.

        ``answers_all``: with the server's own VAD, the server (not our markers) decides
        where turns end, so a turnComplete is taken to answer everything sent so far.
        A turnComplete for nothing we sent (nothing awaited) changes nothing.
        """
        if answers_all:
            sent = self._sent_upto()
            if sent > self._answered_seq or self._awaiting:
                self._awaiting.clear()
                self._answered_seq = max(self._answered_seq, sent)
                self.turns_completed += 1
            return
        if self._awaiting:
            marker = self._awaiting.popleft()
            self._answered_seq = max(self._answered_seq, marker + 1)
            self.turns_completed += 1

    def handle_received(self) -> None:
        """A usable handle arrived: it covers every answered entry."""
        self._covered_seq = max(self._covered_seq, self._answered_seq)
        self.covered = max(self.covered, self.turns_completed)
        self._trim_covered()

    def _trim_covered(self) -> None:
        while self._entries and self._entries[0].seq < self._covered_seq:
            entry = self._entries.popleft()
            self._audio_bytes -= len(entry.message.audio)
        while self._marker_seqs and self._marker_seqs[0] < self._covered_seq:
            self._marker_seqs.popleft()

    @property
    def reply_owed(self) -> bool:
        """An end marker went out on this connection whose turnComplete has not arrived."""
        return bool(self._awaiting)

    @property
    def settled(self) -> bool:
        """Every sent turn is answered and covered by a handle: a handover loses nothing."""
        return not self._awaiting and self._covered_seq >= self._answered_seq

    # ---- new connections --------------------------------------------------------------

    def rewind_for_resume(self) -> int:
        """The handle was accepted: the server is back at ``covered``; re-send everything."""
        self._answered_seq = self._covered_seq
        self.turns_completed = self.covered
        return self._rewind()

    def rewind_for_fresh_session(self) -> int:
        """A fresh session: keep only unanswered turns (see module docstring); re-send them."""
        self._covered_seq = self._answered_seq
        self.covered = self.turns_completed
        return self._rewind()

    def _rewind(self) -> int:
        self._awaiting.clear()  # nothing is on the new connection's wire yet
        self._trim_covered()
        self._cursor = self._first_seq()
        return len(self._entries)

    def clear(self) -> None:
        """The conversation was closed on purpose: forget everything not yet covered."""
        self._entries.clear()
        self._marker_seqs.clear()
        self._awaiting.clear()
        self._audio_bytes = 0
        self._cursor = self._answered_seq = self._covered_seq = self._next_seq
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


def _tail_from(seqs: deque[int], first: int) -> list[int]:
    """The seqs >= ``first`` of an ascending deque, oldest first (walks from the newest end)."""
    tail: list[int] = []
    for seq in reversed(seqs):
        if seq < first:
            break
        tail.append(seq)
    tail.reverse()
    return tail

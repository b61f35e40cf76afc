"""What the emulator saw and did, for byte-for-byte assertions in tests.

A logical session (SessionRecord) survives resumption: it owns the audio the conversation
has consumed and its completed user turns. Resuming from a handle truncates both back to
the handle's snapshot, which is what lets tests prove a client's replay lost and
duplicated nothing.
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

# Bounds so a long demo run cannot grow without limit (tests stay far below them).
# Messages keep their base64 audio (about 4.3 kB per 100 ms chunk): 20k is about 90 MB.
DEFAULT_MAX_MESSAGES = 20_000
DEFAULT_MAX_AUDIO_BYTES = 64 * 1024 * 1024  # about 35 min of 16 kHz s16le per session
DEFAULT_MAX_HANDLES = 10_000
# Replies keep their audio (48 kB/s) only while they are among the latest this many.
DEFAULT_REPLIES_WITH_AUDIO = 200


@dataclass(frozen=True)
class Snapshot:
    """State of a logical session at the end of a user turn's input."""

    audio_len: int
    turn_count: int


@dataclass
class TurnRecord:
    """One completed user turn."""

    index: int
    connection_index: int
    kind: str  # "audio" or "text"
    audio_bytes: int  # consumed 16 kHz PCM bytes that belong to this turn
    transcript: str  # what inputTranscription reported
    ended_by: str  # activityEnd, audioStreamEnd, vad, turnComplete, text
    speech_s: float = 0.0
    addressed: bool = True  # False: proactive audio judged it not meant for the device


@dataclass
class ReplyRecord:
    """One model reply as actually sent (audio = bytes that went out on the socket)."""

    connection_index: int
    turn_index: int
    text: str = ""
    audio: bytearray = field(default_factory=bytearray)
    audio_len: int = 0  # bytes sent, kept when `audio` is released (see EmulatorRecord)
    chunks_sent: int = 0  # modelTurn messages sent
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    completed: bool = False
    # A reply that speaks a NON_BLOCKING tool answer (no user turn: turn_index -1).
    answers_call: str | None = None
    scheduling: str | None = None


class SessionRecord:
    """A logical session: consumed audio, turns, and how many connections served it."""

    def __init__(self, session_id: str | None = None, *, max_audio_bytes: int | None = None):
        self.session_id = session_id or "session-" + secrets.token_hex(6)
        self.turns: list[TurnRecord] = []
        self.connections = 0
        self.created_at = time.time()
        self._audio = bytearray()
        self._audio_len = 0  # total consumed, even past the storage bound
        self._max_audio = DEFAULT_MAX_AUDIO_BYTES if max_audio_bytes is None else max_audio_bytes

    @property
    def consumed_audio(self) -> bytes:
        """Exact 16 kHz s16le bytes the conversation has consumed (see `audio_complete`)."""
        return bytes(self._audio)

    @property
    def consumed_audio_len(self) -> int:
        return self._audio_len

    @property
    def audio_complete(self) -> bool:
        """False once the storage bound was hit (consumed_audio then stops growing)."""
        return len(self._audio) == self._audio_len

    def append_audio(self, pcm: bytes) -> None:
        room = self._max_audio - len(self._audio)
        if room > 0 and len(self._audio) == self._audio_len:
            self._audio += pcm[:room]
        self._audio_len += len(pcm)

    def snapshot(self) -> Snapshot:
        return Snapshot(audio_len=self._audio_len, turn_count=len(self.turns))

    def restore(self, snap: Snapshot) -> None:
        """Forget everything consumed after `snap` (what a resumed handle does not hold)."""
        if snap.audio_len < len(self._audio):
            del self._audio[snap.audio_len :]
        self._audio_len = min(self._audio_len, snap.audio_len)
        del self.turns[snap.turn_count :]

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "connections": self.connections,
            "consumed_audio_len": self._audio_len,
            "consumed_audio_b64": base64.b64encode(self._audio).decode("ascii"),
            "audio_complete": self.audio_complete,
            "turns": [vars(t).copy() for t in self.turns],
        }


@dataclass
class ConnectionRecord:
    """One accepted WebSocket connection (0-based index, in arrival order)."""

    index: int
    path: str = ""
    resumed_from_handle: str | None = None  # the handle the client presented (even if refused)
    resumed: bool = False  # True when that handle was accepted and restored
    session_id: str | None = None
    model: str | None = None  # the setup's model, without "models/"
    setup_complete_sent: bool = False
    messages_received: int = 0
    close_code: int | None = None
    close_reason: str | None = None
    closed_by: str | None = None  # "server", "client", "abort" (no close frame)
    faults: list[str] = field(default_factory=list)  # kinds that fired, in order


class EmulatorRecord:
    """Everything recorded by one LiveEmulator."""

    def __init__(self, *, max_messages: int = DEFAULT_MAX_MESSAGES) -> None:
        self.sessions: list[SessionRecord] = []
        self.messages: list[tuple[int, dict[str, Any]]] = []
        self.connections: list[ConnectionRecord] = []
        self.replies: list[ReplyRecord] = []
        self.messages_dropped = 0
        self.reply_audio_released = 0
        self._max_messages = max_messages

    def add_message(self, connection_index: int, message: dict[str, Any]) -> None:
        self.messages.append((connection_index, message))
        if len(self.messages) > self._max_messages:
            # Drop the oldest tenth at once so trimming stays amortised O(1).
            cut = max(1, self._max_messages // 10)
            del self.messages[:cut]
            self.messages_dropped += cut

    def add_reply(self, reply: ReplyRecord) -> None:
        """Append a reply; release the audio of replies older than the latest few hundred."""
        self.replies.append(reply)
        if len(self.replies) > DEFAULT_REPLIES_WITH_AUDIO:
            old = self.replies[-DEFAULT_REPLIES_WITH_AUDIO - 1]
            if old.audio:
                old.audio = bytearray()
                self.reply_audio_released += 1

    def messages_for(self, connection_index: int) -> list[dict[str, Any]]:
        return [m for i, m in self.messages if i == connection_index]

    def session(self, session_id: str) -> SessionRecord:
        for s in self.sessions:
            if s.session_id == session_id:
                return s
        raise KeyError(session_id)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; audio inside messages is replaced by its decoded length."""
        return {
            "sessions": [s.to_dict() for s in self.sessions],
            "connections": [vars(c).copy() for c in self.connections],
            "messages": [[i, _elide_audio(m)] for i, m in self.messages],
            "messages_dropped": self.messages_dropped,
            "replies": [
                {
                    "connection_index": r.connection_index,
                    "turn_index": r.turn_index,
                    "text": r.text,
                    "audio_len": r.audio_len,
                    "chunks_sent": r.chunks_sent,
                    "tool_calls": r.tool_calls,
                    "interrupted": r.interrupted,
                    "completed": r.completed,
                    "answers_call": r.answers_call,
                    "scheduling": r.scheduling,
                }
                for r in self.replies
            ],
        }


def _elide_audio(message: dict[str, Any]) -> dict[str, Any]:
    realtime = message.get("realtimeInput")
    if not isinstance(realtime, dict):
        return message
    out = dict(realtime)
    for key in ("audio", "video"):
        blob = out.get(key)
        if isinstance(blob, dict) and isinstance(blob.get("data"), str):
            out[key] = {**blob, "data": f"<{len(blob['data']) * 3 // 4} bytes>"}
    return {"realtimeInput": out}

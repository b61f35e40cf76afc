"""The transcript history: every user and model utterance, whole, once.

The daemon assembles each utterance from the transcription chunks of one turn and hands
it over when the turn is complete. It goes to the log (one INFO line, with journal
fields ``TRANSCRIPT_ROLE``, ``TRANSCRIPT_TURN`` and the latency figures) and, when
``[history]`` is on, to a JSON-lines file with size-based rotation: ``history.jsonl``,
then ``history.jsonl.1`` (newer) ... ``history.jsonl.<keep_files-1>`` (oldest).
``read_last`` gives the last N entries across those files for ``edge-agent history``.

Appending one line is a single small write without fsync (a lost last line after a power
cut is acceptable for a transcript); the daemon may still call ``append`` from a worker
thread if the disk is slow.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

HISTORY_FILE = "history.jsonl"
ROLES = ("user", "model")


@dataclass(frozen=True)
class Utterance:
    role: str  # "user" or "model"
    text: str
    turn: int
    wall_time: float  # time.time() when the utterance ended
    latency_ms: Mapping[str, float] = field(default_factory=dict)  # e.g. first_audio_ms

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "time": round(self.wall_time, 3),
            "role": self.role,
            "turn": self.turn,
            "text": self.text,
        }
        if self.latency_ms:
            out["latency_ms"] = {k: round(float(v), 1) for k, v in self.latency_ms.items()}
        return out


def log_utterance(utterance: Utterance, log: logging.Logger = logger) -> None:
    """One INFO line for the whole utterance, with structured fields for the journal."""
    fields: dict[str, Any] = {
        "TRANSCRIPT_ROLE": utterance.role,
        "TRANSCRIPT_TURN": utterance.turn,
        "TRANSCRIPT_TEXT": utterance.text,
    }
    for key, value in utterance.latency_ms.items():
        fields[f"LATENCY_{key.upper()}"] = round(float(value), 1)
    log.info("%s (turn %d): %s", utterance.role, utterance.turn, utterance.text, extra=fields)


class HistoryLog:
    """Appends utterances as JSON lines; rotates before a line would pass max_file_bytes."""

    def __init__(self, path: Path, *, max_file_bytes: int = 1_000_000, keep_files: int = 5):
        if keep_files < 1 or max_file_bytes < 1:
            raise ValueError("keep_files and max_file_bytes must be at least 1")
        self.path = path
        self.max_file_bytes = max_file_bytes
        self.keep_files = keep_files
        self._lock = threading.Lock()

    def append(self, utterance: Utterance) -> None:
        line = (json.dumps(utterance.to_json(), ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    size = self.path.stat().st_size
                except FileNotFoundError:
                    size = 0
                if size and size + len(line) > self.max_file_bytes:
                    self._rotate()
                    size = 0
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
                try:
                    if size and os.pread(fd, 1, size - 1) != b"\n":
                        line = b"\n" + line  # the last write was cut short: end its line
                    os.write(fd, line)
                finally:
                    os.close(fd)
            except OSError as exc:  # a full disk must not stop the conversation
                logger.warning("cannot write the history to %s: %s", self.path, exc)

    def _rotate(self) -> None:
        files = rotated_paths(self.path, self.keep_files)  # newest first
        files[-1].unlink(missing_ok=True)
        for newer, older in zip(reversed(files[:-1]), reversed(files[1:]), strict=True):
            if newer.exists():
                os.replace(newer, older)


def rotated_paths(path: Path, keep_files: int) -> list[Path]:
    """The current file and its rotated predecessors, newest first."""
    return [path] + [path.with_name(f"{path.name}.{i}") for i in range(1, keep_files)]


def read_last(path: Path, n: int, *, keep_files: int = 100) -> list[dict[str, Any]]:
    """The last ``n`` entries (oldest first) across the current and rotated files.

    Damaged lines (a write cut short by a power loss) are skipped.
    """
    if n <= 0:
        return []
    newest_first: list[dict[str, Any]] = []
    for file in rotated_paths(path, keep_files):
        try:
            lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            if file == path:
                continue
            break
        for line in reversed(lines):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("role") in ROLES:
                newest_first.append(entry)
                if len(newest_first) == n:
                    return newest_first[::-1]
    return newest_first[::-1]


def format_entry(entry: Mapping[str, Any]) -> str:
    """One line for `edge-agent history`: local time, turn, who, what."""
    try:
        when = datetime.fromtimestamp(float(entry["time"])).strftime("%Y-%m-%d %H:%M:%S")
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        when = "????-??-?? ??:??:??"
    who = "you  " if entry.get("role") == "user" else "agent"
    return f"{when}  #{entry.get('turn', '?')}  {who}  {entry.get('text', '')}"

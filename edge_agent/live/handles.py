"""The latest session resumption handle: which one is usable, and its copy on disk.

``HandleBook`` is pure (times passed in): it holds the handle the next connection may
offer and says when it must go (expired, for another model, refused by the server).
``HandleStore`` persists it so a restart can resume the conversation.

The file holds a credential-like token (it resumes someone's conversation), so it is
written 0600, atomically (tmp + fsync + rename + fsync of the folder: a power cut leaves
the old or the new handle, never half of one), and ignored once older than its validity
(the service keeps a session resumable for about 2 h). A handle received in this run
is aged on the monotonic clock (``issued_mono``): NTP stepping the wall clock by hours
after boot must neither discard a fresh handle (a step forward) nor keep one whose age
turned negative (a step back). Only the file's copy is aged by the wall clock, the one
clock that spans a restart; a step during the downtime can make it look too old (it is
dropped: a fresh session) or too young (the server refuses it with 1007, and the
session falls back to a fresh one).

All ``HandleStore`` methods do blocking file I/O; the session runs them on one worker
thread of its own, so an fsync on a slow SD card never holds up the event loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.statefile import remove_file, save_file

logger = logging.getLogger(__name__)

FILE_NAME = "live_resumption_handle.json"
DEFAULT_VALIDITY_S = 2 * 3600.0


@dataclass(frozen=True)
class StoredHandle:
    handle: str
    issued_at: float  # wall-clock seconds
    model: str
    issued_mono: float | None = field(default=None, compare=False)  # None: from the file

    def __repr__(self) -> str:  # the token stays out of logs and tracebacks
        return f"StoredHandle(issued_at={self.issued_at!r}, model={self.model!r})"


class HandleBook:
    """The handle the next connection may offer; the session mirrors every drop on disk.

    The file is read once, lazily (``loaded`` False until then): a constructor does no
    I/O, and a handle received on this run always wins over the file's.
    """

    def __init__(self, validity_s: float = DEFAULT_VALIDITY_S) -> None:
        self.validity_s = validity_s
        self.current: StoredHandle | None = None
        self.loaded = False

    def loaded_from_store(self, stored: StoredHandle | None) -> None:
        self.current = stored
        self.loaded = True

    def received(
        self, handle: str, model: str, wall_now: float, now: float | None = None
    ) -> StoredHandle:
        """The server sent a new handle: it replaces the held one at once (``now``: the
        monotonic clock, by which it is aged while this process runs)."""
        self.current = StoredHandle(handle, wall_now, model, issued_mono=now)
        self.loaded = True
        return self.current

    def usable(
        self, model: str, wall_now: float, now: float | None = None
    ) -> tuple[StoredHandle | None, str | None]:
        """The handle to offer, and why the held one must be dropped (None: keep it)."""
        held = self.current
        if held is None:
            return None, None
        age = self._age(held, wall_now, now)
        if held.model != model or not (0 <= age < self.validity_s):
            return None, f"expired or for another model (age {age:.0f} s)"
        return held, None

    def drop(self) -> bool:
        """Forget the handle (the file must be cleared too); True if one was held."""
        held = self.current is not None
        self.current = None
        self.loaded = True  # the file is cleared with it: never read it back
        return held

    def age_s(self, wall_now: float, now: float | None = None) -> float | None:
        return None if self.current is None else self._age(self.current, wall_now, now)

    @staticmethod
    def _age(held: StoredHandle, wall_now: float, now: float | None) -> float:
        if held.issued_mono is not None and now is not None:
            return now - held.issued_mono
        return wall_now - held.issued_at


class HandleStore:
    """Load/save/clear one handle file in ``state_dir``; no I/O in the constructor."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        validity_s: float = DEFAULT_VALIDITY_S,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(state_dir) / FILE_NAME
        self.validity_s = validity_s
        self._wall_clock = wall_clock

    def load(self, model: str) -> StoredHandle | None:
        """The stored handle for ``model`` if it is still valid; anything else is discarded."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            stored = StoredHandle(str(raw["handle"]), float(raw["issued_at"]), str(raw["model"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable resumption handle file %s: %s", self.path, exc)
            self.clear()
            return None
        age = self._wall_clock() - stored.issued_at
        if not stored.handle or stored.model != model or not (0 <= age < self.validity_s):
            logger.info(
                "discarding stored resumption handle (age %.0f s, model %s)", age, stored.model
            )
            self.clear()
            return None
        return stored

    def save(self, handle: str, model: str, issued_at: float | None = None) -> StoredHandle:
        stored = StoredHandle(handle, self._wall_clock() if issued_at is None else issued_at, model)
        data = json.dumps(
            {"handle": stored.handle, "issued_at": stored.issued_at, "model": stored.model}
        ).encode()
        with contextlib.suppress(OSError):  # save_file says why when the folder is unusable
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        save_file(self.path, data, "resumption handle")  # kept in memory when it fails
        return stored

    def clear(self) -> None:
        remove_file(self.path, "resumption handle")  # a failure is retried, logged once

    def age_s(self, stored: StoredHandle) -> float:
        return self._wall_clock() - stored.issued_at

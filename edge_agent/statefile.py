"""Files in the state directory, replaced atomically (timers, volume, resumption handles,
mute).

A power cut in the middle of a write must leave either the old or the new file, never a
torn one: write a temporary file beside the target, fsync it, rename it over the target,
then fsync the directory so the rename itself is durable.

A state directory that cannot be written (an SD card the kernel remounted read-only after
errors, a full disk) must not stop the appliance: ``save_file`` / ``save_json`` never
raise for it. What could not be saved stays in memory (the caller's) and here, as the
newest content per file; the first failure of each kind of state is logged once (later
ones at DEBUG), ``save_problems()`` says it for STATUS, and ``retry_pending()`` (the
daemon's health loop calls it every few seconds) writes it once the fault clears.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM}


@dataclass(frozen=True)
class _Unsaved:
    what: str  # "timers", "mute", ... as the log and STATUS name it
    problem: str  # "state directory /x is read-only"
    data: bytes | None  # the newest content; None: the file should be removed


_lock = threading.Lock()  # one writer at a time; guards _unsaved
_unsaved: dict[Path, _Unsaved] = {}


def replace_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (mode 0600); the old content survives any crash."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    """Make the rename itself durable (not every file system lets a folder be synced)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def describe_failure(path: Path, exc: OSError) -> str:
    """Why a state file cannot be written, as a person reads it."""
    folder = path.parent
    if exc.errno == errno.EROFS:
        return f"state directory {folder} is read-only"
    if exc.errno in _FULL:
        return f"state directory {folder} is full ({exc.strerror})"
    if exc.errno in _NOT_WRITABLE:
        return f"state directory {folder} is not writable ({exc.strerror})"
    return f"{path}: {exc.strerror or exc}"


def save_file(path: Path, data: bytes, what: str) -> bool:
    """Replace ``path`` (as ``replace_file``); False when it could not be written: then it
    is kept for ``retry_pending`` and the failure is logged once per episode."""
    with _lock:
        return _write_locked(path, data, what)


def save_json(path: Path, data: Any, what: str) -> bool:
    """``save_file`` of ``data`` as JSON."""
    text = json.dumps(data, ensure_ascii=False, indent=1, sort_keys=True) + "\n"
    return save_file(path, text.encode("utf-8"), what)


def remove_file(path: Path, what: str) -> bool:
    """Remove ``path`` (absent is fine); a removal that fails is retried like a save."""
    with _lock:
        return _write_locked(path, None, what)


def retry_pending() -> int:
    """Write what earlier failed (blocking: call from a worker thread); how many remain."""
    with _lock:
        for path, unsaved in list(_unsaved.items()):
            _write_locked(path, unsaved.data, unsaved.what)
        return len(_unsaved)


def save_problems(state_dir: Path | None = None) -> list[str]:
    """One sentence per cause, e.g. "cannot save timers, mute: state directory /x is
    read-only"; empty when everything is on disk."""
    with _lock:
        by_problem: dict[str, list[str]] = {}
        for path, unsaved in _unsaved.items():
            if state_dir is None or path.parent == state_dir:
                names = by_problem.setdefault(unsaved.problem, [])
                if unsaved.what not in names:
                    names.append(unsaved.what)
    return [f"cannot save {', '.join(sorted(w))}: {p}" for p, w in sorted(by_problem.items())]


def _write_locked(path: Path, data: bytes | None, what: str) -> bool:
    earlier = _unsaved.get(path)
    try:
        if data is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            replace_file(path, data)
    except OSError as exc:
        problem = describe_failure(path, exc)
        _unsaved[path] = _Unsaved(what, problem, data)
        if earlier is None or earlier.problem != problem:
            logger.warning("cannot save %s: %s; kept in memory, retrying", what, problem)
        else:
            logger.debug("still cannot save %s: %s", what, problem)
        return False
    if earlier is not None:
        del _unsaved[path]
        logger.info("%s saved again in %s", what, path.parent)
    return True


def read_json(path: Path) -> Any | None:
    """The file's JSON, or None when it is absent or unreadable (logged: state is rebuilt)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        logger.warning("cannot read state file %s: %s; starting empty", path, exc)
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        logger.warning("state file %s is not valid JSON (%s); starting empty", path, exc)
        return None

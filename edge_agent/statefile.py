"""Files in the state directory, replaced atomically (timers, volume, resumption handles,
mute).

A power cut in the middle of a write must leave either the old or the new file, never a
torn one: write a temporary file beside the target, fsync it, rename it over the target,
then fsync the directory so the rename itself is durable.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


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


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON; the old content survives any crash mid-way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, ensure_ascii=False, indent=1, sort_keys=True) + "\n"
    replace_file(path, text.encode("utf-8"))


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

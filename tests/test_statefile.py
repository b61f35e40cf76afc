"""statefile: a state directory that refuses writes is logged once, kept, and retried."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edge_agent import statefile

pytestmark = pytest.mark.shelf


def test_a_refused_save_is_logged_once_kept_and_written_when_the_fault_clears(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("")  # a file where the folder should be: every write fails
    target = blocker / "timers.json"
    with caplog.at_level(logging.DEBUG, logger="edge_agent.statefile"):
        assert statefile.save_json(target, {"n": 1}, "timers") is False
        assert statefile.save_json(target, {"n": 2}, "timers") is False
        assert statefile.retry_pending() >= 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage().split(":")[0] for r in warnings] == ["cannot save timers"]
    problems = statefile.save_problems(blocker)
    assert len(problems) == 1 and problems[0].startswith("cannot save timers: ")
    blocker.unlink()
    blocker.mkdir()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="edge_agent.statefile"):
        statefile.retry_pending()
    assert '"n": 2' in target.read_text()  # the newest content, not the first
    assert statefile.save_problems(blocker) == []
    assert "timers saved again" in caplog.text


def test_a_removal_cancels_a_pending_save(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("")
    target = blocker / "live_resumption_handle.json"
    assert statefile.save_file(target, b"token", "resumption handle") is False
    assert statefile.remove_file(target, "resumption handle") is False  # still refused
    blocker.unlink()
    blocker.mkdir()
    statefile.retry_pending()
    assert not target.exists()  # the dropped handle never comes back
    assert statefile.save_problems(blocker) == []


def test_failures_are_named_as_people_say_them() -> None:
    import errno

    path = Path("/x/timers.json")
    assert statefile.describe_failure(path, OSError(errno.EROFS, "Read-only file system")) == (
        "state directory /x is read-only"
    )
    full = statefile.describe_failure(path, OSError(errno.ENOSPC, "No space left on device"))
    assert full.startswith("state directory /x is full")

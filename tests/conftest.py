"""The suite's key sweep: at the end of a run, everything the run produced is searched
for the stand-in API key, and a single hit fails the run (exit status), naming the file.

Searched: the run's pytest basetemp (every tmp_path: daemon logs, transcripts, state
files, emulator records, configs) and the captured output and failure text of every
test. The stand-in key is `edge_agent_devkit.rig.appliance.API_KEY`, random per run and
shaped like no real key, so a hit can only come from the run. A file that holds a key
and nothing else is a key file a test wrote on purpose, not a leak.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

from edge_agent_devkit.rig.appliance import API_KEY

SWEPT_KEYS: tuple[str, ...] = (API_KEY,)
_CHUNK = 8 << 20

_leaks: list[str] = []


def _file_leaks(path: Path, needles: Sequence[bytes]) -> bool:
    overlap = max(len(n) for n in needles) - 1
    with open(path, "rb") as f:
        first = f.read(_CHUNK)
        if first.strip() in needles and len(first) < _CHUNK:
            return False  # a key file, written on purpose
        data = first
        while data:
            if any(n in data for n in needles):
                return True
            more = f.read(_CHUNK)
            data = data[-overlap:] + more if more else b""
    return False


def find_leaks(roots: Iterable[Path], keys: Sequence[str] = SWEPT_KEYS) -> list[Path]:
    """Regular files under `roots` that contain one of `keys` (FIFOs and sockets of the
    rig are skipped: opening a FIFO would block)."""
    needles = [k.encode() for k in keys if k]
    hits = []
    for root in roots:
        for folder, _dirs, files in os.walk(root):
            for name in files:
                path = Path(folder, name)
                try:
                    if not stat.S_ISREG(path.lstat().st_mode):
                        continue
                    if _file_leaks(path, needles):
                        hits.append(path)
                except OSError:
                    continue
    return hits


def text_leaks(text: str, keys: Sequence[str] = SWEPT_KEYS) -> bool:
    return any(k and k in text for k in keys)


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    texts = [content for _title, content in report.sections]
    if report.failed:
        texts.append(str(report.longrepr))
    where = f"captured output of {report.nodeid}"  # each phase repeats the earlier ones
    if where not in _leaks and any(text_leaks(t) for t in texts):
        _leaks.append(where)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    factory = getattr(session.config, "_tmp_path_factory", None)
    basetemp = getattr(factory, "_basetemp", None)  # None: no test asked for tmp_path
    if basetemp is not None:
        _leaks.extend(str(p) for p in find_leaks([basetemp]))
    if _leaks and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _leaks:
        terminalreporter.section("the stand-in API key leaked", red=True)
        for where in _leaks:
            terminalreporter.write_line(f"key found in {where}")

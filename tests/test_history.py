"""Transcript history: whole utterances as JSON lines, size-based rotation, reading back."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from edge_agent.abilities.history import (
    HISTORY_FILE,
    HistoryLog,
    Utterance,
    format_entry,
    log_utterance,
    read_last,
    rotated_paths,
)

T0 = 1_800_000_000.0


def utterance(i: int) -> Utterance:
    role = "user" if i % 2 == 0 else "model"
    return Utterance(
        role,
        f"utterance number {i} " + "words " * 10,
        i // 2 + 1,
        T0 + i,
        {"first_audio_ms": 420.25} if role == "model" else {},
    )


def test_entries_are_whole_json_lines(tmp_path: Path) -> None:
    log = HistoryLog(tmp_path / HISTORY_FILE)
    log.append(Utterance("user", "what time is it", 1, T0))
    log.append(Utterance("model", "It's ten past three.", 1, T0 + 1.5, {"first_audio_ms": 612.34}))
    lines = (tmp_path / HISTORY_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"time": T0, "role": "user", "turn": 1, "text": "what time is it"},
        {
            "time": T0 + 1.5,
            "role": "model",
            "turn": 1,
            "text": "It's ten past three.",
            "latency_ms": {"first_audio_ms": 612.3},
        },
    ]


def test_rotation_keeps_n_files_under_the_size_limit(tmp_path: Path) -> None:
    path = tmp_path / HISTORY_FILE
    log = HistoryLog(path, max_file_bytes=1000, keep_files=3)
    for i in range(100):
        log.append(utterance(i))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [HISTORY_FILE, f"{HISTORY_FILE}.1", f"{HISTORY_FILE}.2"]
    for file in rotated_paths(path, 3):
        assert 0 < file.stat().st_size <= 1000
    # Newest first across files: the current file holds the latest entries.
    last_current = json.loads(path.read_text().splitlines()[-1])
    assert last_current["text"].startswith("utterance number 99 ")
    first_of_current = json.loads(path.read_text().splitlines()[0])
    last_of_older = json.loads((tmp_path / f"{HISTORY_FILE}.1").read_text().splitlines()[-1])
    assert last_of_older["time"] == first_of_current["time"] - 1


def test_read_last_spans_rotated_files_in_order(tmp_path: Path) -> None:
    path = tmp_path / HISTORY_FILE
    log = HistoryLog(path, max_file_bytes=1000, keep_files=4)
    for i in range(30):
        log.append(utterance(i))
    current = len(path.read_text().splitlines())
    n = current + 3  # reaches into the rotated file
    entries = read_last(path, n)
    assert [e["time"] for e in entries] == [T0 + i for i in range(30 - n, 30)]
    assert read_last(path, 0) == []
    everything = read_last(path, 10_000)
    assert everything[-1]["time"] == T0 + 29 and len(everything) < 30  # oldest rotated away


def test_damaged_lines_and_missing_files_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / HISTORY_FILE
    assert read_last(path, 5) == []
    log = HistoryLog(path)
    log.append(utterance(0))
    with path.open("a") as f:
        f.write('{"role": "user", "text": "cut sho')  # power lost mid-write
    log.append(utterance(1))
    assert [e["turn"] for e in read_last(path, 5)] == [1, 1]


def test_unwritable_history_is_logged_not_raised(tmp_path: Path, caplog) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    log = HistoryLog(blocker / HISTORY_FILE)
    with caplog.at_level(logging.WARNING):
        log.append(utterance(0))
    assert "cannot write the history" in caplog.text


def test_bad_limits_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        HistoryLog(tmp_path / HISTORY_FILE, keep_files=0)


def test_format_entry_and_journal_fields(caplog) -> None:
    line = format_entry({"time": T0, "role": "user", "turn": 3, "text": "hello"})
    assert line.endswith("#3  you    hello") and line.startswith("20")
    assert format_entry({"role": "model", "turn": 3, "text": "hi"}).endswith("agent  hi")
    with caplog.at_level(logging.INFO):
        log_utterance(Utterance("model", "It is three.", 4, T0, {"first_audio_ms": 500}))
    record = caplog.records[-1]
    assert record.getMessage() == "model (turn 4): It is three."
    assert record.TRANSCRIPT_ROLE == "model" and record.TRANSCRIPT_TURN == 4
    assert record.LATENCY_FIRST_AUDIO_MS == 500.0

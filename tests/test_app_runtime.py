"""The daemon's runtime helpers on a real event loop: reply drain, timers, mute file.

`ReplyPlayback` runs with the real JitterBuffer and CueMixer; its sound-card side is
called from a real thread, as PortAudio's callback would. The whole daemon runs in
tests/test_e2e.py; these pin the bookkeeping the split moved out of it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.app.playback import ReplyPlayback
from edge_agent.app.runtime import MuteFile, Timers, TurnTranscript
from edge_agent.config import Config

BLOCK = 240  # 10 ms at 24 kHz


def _pull_on_thread(playback: ReplyPlayback, blocks: int) -> list[np.ndarray]:
    """Pull `blocks` blocks on another thread, as the sound card does."""
    out: list[np.ndarray] = []
    thread = threading.Thread(
        target=lambda: out.extend(playback.output_source(BLOCK) for _ in range(blocks))
    )
    thread.start()
    thread.join()
    return out


def test_a_reply_that_plays_out_reports_one_drain_on_the_loop() -> None:
    async def scenario() -> tuple[list[str], bool]:
        seen: list[str] = []
        playback = ReplyPlayback(Config(), on_drained=lambda: seen.append("drained"))
        playback.loop = asyncio.get_running_loop()
        playback.push(np.full(2400, 1000, dtype="<i2").tobytes())  # 100 ms
        playback.turn_completed()
        assert playback.playing
        _pull_on_thread(playback, 40)  # 400 ms: the reply, its fade and silence
        await asyncio.sleep(0.05)  # the loop runs what the thread handed over
        _pull_on_thread(playback, 10)
        await asyncio.sleep(0.05)
        return seen, playback.playing

    seen, playing = asyncio.run(scenario())
    assert seen == ["drained"]
    assert not playing


def test_a_flushed_reply_reports_no_drain_and_plays_silence() -> None:
    async def scenario() -> tuple[list[str], int, list[np.ndarray]]:
        seen: list[str] = []
        playback = ReplyPlayback(Config(), on_drained=lambda: seen.append("drained"))
        playback.loop = asyncio.get_running_loop()
        playback.push(np.full(24000, 1000, dtype="<i2").tobytes())  # 1 s
        _pull_on_thread(playback, 30)  # past the prefill: the reply is audible
        dropped = playback.flush()
        blocks = _pull_on_thread(playback, 20)
        await asyncio.sleep(0.05)
        return seen, dropped, blocks

    seen, dropped, blocks = asyncio.run(scenario())
    assert seen == []
    assert 0 < dropped < 24000
    assert not np.any(blocks[-1]), "after the fade-out only silence"


def test_the_first_audible_sample_is_logged_with_its_latency(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        playback = ReplyPlayback(Config(), on_drained=lambda: None)
        playback.loop = asyncio.get_running_loop()
        playback.push(np.full(24000, 1000, dtype="<i2").tobytes())
        _pull_on_thread(playback, 30)
        await asyncio.sleep(0.05)

    with caplog.at_level(logging.INFO, logger="edge_agent.app.playback"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if "first chunk arrived" in r.getMessage()]
    assert len(lines) == 1


def test_timers_fire_once_by_name_and_a_reset_timer_replaces_the_old_one() -> None:
    async def scenario() -> list[str]:
        fired: list[str] = []
        timers = Timers(fired.append)
        now = time.monotonic()
        timers.set("listen", now + 0.05)
        timers.set("response", now + 0.02)
        timers.set("listen", now + 0.08)  # replaces the first "listen"
        timers.set("idle", now + 0.03)
        timers.cancel("idle")
        await asyncio.sleep(0.2)
        timers.set("late", time.monotonic() + 0.01)
        timers.cancel_all()
        await asyncio.sleep(0.05)
        return fired

    assert asyncio.run(scenario()) == ["response", "listen"]


def test_transcript_logs_each_side_once_per_turn(caplog: pytest.LogCaptureFixture) -> None:
    transcript = TurnTranscript()
    with caplog.at_level(logging.INFO, logger="edge_agent.app.runtime"):
        transcript.heard(" what time")
        transcript.heard(" is it")
        transcript.said("Noon.")
        transcript.log_and_clear()
        transcript.log_and_clear()  # nothing new: nothing logged
    assert [r.getMessage() for r in caplog.records] == [
        "you said: what time is it",
        "gemini said: Noon.",
    ]


@pytest.mark.shelf
def test_a_hostile_servers_huge_transcripts_keep_a_turn_bounded() -> None:
    """Huge pieces, and endless small ones, keep the newest words and a bounded size."""
    from edge_agent.app.runtime import TRANSCRIPT_MAX_CHARS

    transcript = TurnTranscript(wall_clock=lambda: 1000.0)
    for _ in range(50):
        transcript.said("x" * 1_000_000)
    for i in range(5_000):
        transcript.heard(f" w{i}")
    transcript.said(" the end.")
    heard, said = transcript.log_and_clear()
    assert len(said.text) <= TRANSCRIPT_MAX_CHARS and said.text.endswith("x the end.")
    assert len(heard.text) <= TRANSCRIPT_MAX_CHARS and heard.text.endswith("w4999")


def test_mute_file_survives_a_restart_and_a_missing_file_means_unmuted(tmp_path: Path) -> None:
    assert MuteFile(tmp_path).load() is False
    MuteFile(tmp_path).save(True)
    assert MuteFile(tmp_path).load() is True
    MuteFile(tmp_path).save(False)
    assert MuteFile(tmp_path).load() is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["muted"]


def test_mute_file_that_cannot_be_written_warns_instead_of_failing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a-file").write_text("")  # the state "directory" is a file: not writable
    mute = MuteFile(tmp_path / "a-file")
    with caplog.at_level(logging.WARNING, logger="edge_agent.statefile"):
        mute.save(True)
    assert "cannot save mute" in caplog.text
    assert mute.load() is False


def test_transcript_utterances_carry_the_turn_number_and_the_model_side_its_latency(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transcript = TurnTranscript(wall_clock=lambda: 1000.0)
    with caplog.at_level(logging.INFO, logger="edge_agent.app.runtime"):
        transcript.heard("set a timer")
        transcript.said("Done.")
        first = transcript.log_and_clear({"first_audio_ms": 412.34})
        transcript.said("Your timer ended.")
        second = transcript.log_and_clear()
    assert [(u.role, u.text, u.turn) for u in first] == [
        ("user", "set a timer", 1),
        ("model", "Done.", 1),
    ]
    assert first[1].latency_ms == {"first_audio_ms": 412.34} and first[0].latency_ms == {}
    assert [(u.role, u.turn) for u in second] == [("model", 2)]
    fields = caplog.records[1].__dict__
    assert fields["TRANSCRIPT_ROLE"] == "model" and fields["TRANSCRIPT_TURN"] == 1
    assert fields["LATENCY_FIRST_AUDIO_MS"] == 412.3

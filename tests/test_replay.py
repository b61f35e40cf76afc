"""Uplink/replay log: cursor, handle coverage, resume vs fresh rewinds, bounded overflow."""

from __future__ import annotations

import pytest

from edge_agent.core.replay import PCM16K_BYTES_PER_S, ReplayLog, UplinkKind, UplinkMessage

START = UplinkMessage(UplinkKind.ACTIVITY_START)
END = UplinkMessage(UplinkKind.ACTIVITY_END)


def audio(tag: int, n: int = 320) -> UplinkMessage:
    return UplinkMessage(UplinkKind.AUDIO, audio=bytes([tag]) * n)


def drain(log: ReplayLog) -> list[UplinkMessage]:
    """Send everything pending, as the session's sender task does."""
    out = []
    while (item := log.peek_unsent()) is not None:
        seq, message = item
        out.append(message)
        log.mark_sent(seq)
    return out


def turn(log: ReplayLog, tag: int, chunks: int = 3) -> list[UplinkMessage]:
    messages = [START, *(audio(tag * 10 + i) for i in range(chunks)), END]
    for m in messages:
        log.append(m)
    return messages


def test_cursor_sends_each_entry_once_in_order() -> None:
    log = ReplayLog(10_000)
    first = turn(log, 1)
    assert drain(log) == first
    assert drain(log) == []
    log.append(audio(9))
    assert drain(log) == [audio(9)]


def test_handle_covers_answered_turns_only() -> None:
    log = ReplayLog(100_000)
    turn(log, 1)
    drain(log)
    # turn 2 starts before turn 1 is answered: its audio must survive turn 1's handle
    log.append(START)
    log.append(audio(21))
    drain(log)
    log.turn_completed()
    log.handle_received()
    assert log.covered == 1
    assert log.rewind_for_resume() == 2
    assert drain(log) == [START, audio(21)]


def test_resume_rewinds_answered_but_uncovered_turns() -> None:
    """turnComplete arrived but the connection died before the handle after it."""
    log = ReplayLog(100_000)
    t1 = turn(log, 1)
    drain(log)
    log.turn_completed()  # no handle after it
    assert log.reply_owed is False and log.settled is False
    log.rewind_for_resume()
    assert log.turns_completed == 0  # the server forgot turn 1: it will be answered again
    assert drain(log) == t1
    log.turn_completed()
    log.handle_received()
    assert log.stats().entries == 0 and log.settled


def test_fresh_session_keeps_only_unanswered_turns() -> None:
    log = ReplayLog(100_000)
    turn(log, 1)
    drain(log)
    log.turn_completed()  # answered, heard, but no handle
    t2 = turn(log, 2)  # asked, not answered
    drain(log)
    log.append(START)
    log.append(audio(31))  # in progress
    assert log.reply_owed
    assert log.rewind_for_fresh_session() == len(t2) + 2
    assert drain(log) == [*t2, START, audio(31)]
    # the fresh session's own first handle covers nothing new
    log.handle_received()
    assert log.stats().entries == len(t2) + 2


def test_offline_buffer_is_sent_after_the_replay() -> None:
    log = ReplayLog(100_000)
    log.append(START)
    log.append(audio(1))
    drain(log)  # went out, then the connection dropped
    log.append(audio(2))  # spoken while reconnecting
    log.append(END)
    log.rewind_for_resume()
    assert drain(log) == [START, audio(1), audio(2), END]


def test_spurious_turn_complete_cannot_cover_unsent_turns() -> None:
    log = ReplayLog(100_000)
    turn(log, 1)  # appended but not sent
    log.turn_completed()
    log.handle_received()
    assert log.turns_completed == 0 and log.stats().entries == 5


def test_overflow_drops_oldest_and_counts_lost_unsent_audio() -> None:
    log = ReplayLog(max_audio_bytes=1000)
    log.append(audio(0, 400))
    log.append(audio(1, 400))
    drain(log)
    log.append(audio(2, 400))  # over: drops chunk 0, which was sent (only replay is lost)
    log.append(audio(3, 400))  # drops chunk 1, sent too
    stats = log.stats()
    assert stats.audio_bytes == 800 and stats.dropped_audio_bytes == 800
    assert stats.dropped_unsent_audio_bytes == 0
    log.append(audio(4, 400))  # drops chunk 2, which never went out: speech lost
    stats = log.stats()
    assert stats.audio_bytes == 800 and stats.dropped_unsent_audio_bytes == 400
    assert drain(log) == [audio(3, 400), audio(4, 400)]


def test_entry_count_is_bounded_too() -> None:
    log = ReplayLog(max_audio_bytes=10**9, max_entries=10)
    for _ in range(25):
        log.append(END)
    assert log.stats().entries == 10 and log.stats().dropped_entries == 15


def test_for_seconds_bound() -> None:
    log = ReplayLog.for_seconds(2.0)
    assert log.max_audio_bytes == 2 * PCM16K_BYTES_PER_S
    for i in range(300):  # 3 s of 10 ms chunks
        log.append(audio(i % 256, 320))
    assert log.stats().audio_bytes == 2 * PCM16K_BYTES_PER_S


def test_clear_forgets_and_restarts_counters() -> None:
    log = ReplayLog(100_000)
    turn(log, 1)
    drain(log)
    log.clear()
    assert log.peek_unsent() is None and log.stats().markers == 0 and log.settled
    t = turn(log, 2)
    assert drain(log) == t


def test_activity_end_is_an_end_marker_and_stream_end_is_not() -> None:
    """audioStreamEnd gets no reply when the server's VAD already ended the turn, so it
    cannot be counted as a marker that gets exactly one turnComplete."""
    assert END.ends_turn
    assert not UplinkMessage(UplinkKind.AUDIO_STREAM_END).ends_turn
    assert not START.ends_turn and not audio(1).ends_turn


def test_bad_bounds_are_rejected() -> None:
    with pytest.raises(ValueError):
        ReplayLog(0)


def test_backlog_of_audio_is_coalesced_without_changing_bytes() -> None:
    log = ReplayLog(100_000)
    log.append(START)
    chunks = [audio(i, 320) for i in range(10)]
    for c in chunks:
        log.append(c)
    log.append(END)
    sent = []
    while (item := log.peek_unsent(coalesce_audio_bytes=1000)) is not None:
        seq, message = item
        sent.append(message)
        log.mark_sent(seq)
    assert [m.kind for m in sent] == [UplinkKind.ACTIVITY_START] + [UplinkKind.AUDIO] * 4 + [
        UplinkKind.ACTIVITY_END
    ]
    assert [len(m.audio) for m in sent[1:5]] == [960, 960, 960, 320]
    assert b"".join(m.audio for m in sent) == b"".join(c.audio for c in chunks)


def test_mark_sent_survives_overflow_during_a_send() -> None:
    log = ReplayLog(max_audio_bytes=800)
    log.append(audio(1, 400))
    seq, _ = log.peek_unsent()
    log.append(audio(2, 400))
    log.append(audio(3, 400))  # drops chunk 1 while it is "on the wire"
    log.mark_sent(seq)
    assert drain(log) == [audio(2, 400), audio(3, 400)]


# ---- overflow drops whole turns -------------------------------------------------------------


def test_overflow_offline_drops_the_oldest_whole_turn() -> None:
    """Two 0.6 s turns spoken offline into a 1 s log: turn A goes whole, B is sent intact."""
    log = ReplayLog(max_audio_bytes=32_000)
    a = [START, *(audio(10 + i, 3200) for i in range(6)), END]
    b = [START, *(audio(20 + i, 3200) for i in range(6)), END]
    for m in a + b:
        log.append(m)
    stats = log.stats()
    assert stats.dropped_entries == len(a) and stats.dropped_unsent_audio_bytes == 6 * 3200
    assert drain(log) == b
    assert log.reply_owed
    log.turn_completed()  # B's answer: the only turn the server saw
    log.handle_received()
    assert not log.reply_owed and log.settled and log.stats().entries == 0


def test_overflow_of_one_long_turn_keeps_its_activity_start() -> None:
    log = ReplayLog(max_audio_bytes=1000)
    log.append(START)
    for i in range(5):
        log.append(audio(i, 400))
    assert log.stats().audio_bytes == 800
    assert drain(log) == [START, audio(3, 400), audio(4, 400)]
    # the start went out: later overflow must not send it a second time
    log.append(audio(5, 400))
    log.append(END)
    assert drain(log) == [audio(5, 400), END]
    log.rewind_for_resume()  # the replay is still a well-formed turn
    assert drain(log) == [START, audio(4, 400), audio(5, 400), END]


def test_overflow_start_sent_but_next_audio_not_is_not_sent_twice() -> None:
    log = ReplayLog(max_audio_bytes=800)
    log.append(START)
    drain(log)
    for i in range(3):
        log.append(audio(i, 400))  # the third drops chunk 0, which was never sent
    assert log.stats().dropped_unsent_audio_bytes == 400
    assert drain(log) == [audio(1, 400), audio(2, 400)]


def test_dropped_unsent_end_marker_is_never_awaited() -> None:
    log = ReplayLog(max_audio_bytes=1000)
    turn(log, 1, chunks=2)  # 2 x 320 bytes
    log.append(START)
    log.append(audio(2, 900))  # over: turn 1 goes whole, before its END was sent
    log.append(END)
    assert drain(log) == [START, audio(2, 900), END]
    log.turn_completed()
    assert not log.reply_owed and log.turns_completed == 1


# ---- counting with the server's own VAD ---------------------------------------------------


def test_server_vad_turn_complete_answers_everything_sent_without_markers() -> None:
    """The server's VAD ended the turn: no marker went out, yet the handle covers it."""
    log = ReplayLog(100_000)
    for i in range(4):
        log.append(audio(i))
    drain(log)
    assert not log.reply_owed and log.settled  # nothing we can know is owed
    log.turn_completed(answers_all=True)
    assert not log.settled  # answered, but a handover now would replay it
    log.append(audio(9))  # spoken after the answer, not sent yet
    log.handle_received()
    assert log.settled and drain(log) == [audio(9)]
    log.rewind_for_resume()
    assert drain(log) == [audio(9)]  # the answered turn is not replayed


def test_server_vad_stream_end_after_the_vad_ended_the_turn_owes_nothing() -> None:
    log = ReplayLog(100_000)
    log.append(audio(1))
    drain(log)
    log.turn_completed(answers_all=True)
    log.handle_received()
    log.append(UplinkMessage(UplinkKind.AUDIO_STREAM_END))  # the mic paused, later
    drain(log)
    assert not log.reply_owed and log.settled

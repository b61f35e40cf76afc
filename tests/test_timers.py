"""Timers: the pure book and ring policy (time passed in), the saved file, the tools and
the ringer loop."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from edge_agent.abilities.timer_tools import (
    TIMERS_FILE,
    TimerRinger,
    TimerService,
    TimerStore,
    parse_duration,
    timer_tools,
)
from edge_agent.abilities.timers import (
    RING_STOPPERS,
    RingEnded,
    RingPolicy,
    StopReason,
    TimerBook,
    TimerError,
    TimerFired,
    TimerMissed,
    TimerState,
    describe_duration,
)
from edge_agent.core.cues import Cue, render_cue
from edge_agent.core.leds import pattern_for, timer_ringing_pattern
from edge_agent.core.state import AgentState
from edge_agent.live.tools import ToolRegistry

T0 = 1_800_000_000.0  # a wall-clock time in 2027


# --------------------------------------------------------------------------- pure book


def test_set_list_and_fire_in_due_order() -> None:
    book = TimerBook()
    pasta = book.add(600, "pasta", T0)
    eggs = book.add(300, "", T0 + 1)
    assert [t.label for t in book.running()] == ["5 minutes timer", "pasta"]
    assert book.next_deadline() == eggs.due_at == T0 + 301
    assert book.advance(T0 + 300) == []
    events = book.advance(T0 + 301)
    assert [type(e) for e in events] == [TimerFired]
    assert events[0].timer.id == eggs.id and events[0].timer.state is TimerState.RINGING
    assert book.is_ringing and [t.id for t in book.running()] == [pasta.id]


def test_ring_ends_after_max_ring_s() -> None:
    book = TimerBook(RingPolicy(max_ring_s=900))
    timer = book.add(60, "tea", T0)
    book.advance(T0 + 60)
    assert book.next_deadline() == T0 + 60 + 900
    assert book.advance(T0 + 60 + 899) == []
    assert book.is_ringing
    events = book.advance(T0 + 60 + 900)
    assert events == [RingEnded((book_timer(timer, TimerState.RINGING),), StopReason.TIMED_OUT)]
    assert not book.is_ringing and book.next_deadline() is None


def book_timer(timer: Any, state: TimerState) -> Any:
    from dataclasses import replace

    return replace(timer, state=state)


@pytest.mark.parametrize("reason", [*sorted(RING_STOPPERS), StopReason.CONTROL])
def test_button_wake_word_voice_and_stop_silence_every_ringing_timer(reason: StopReason) -> None:
    book = TimerBook()
    book.add(10, "a", T0)
    book.add(10, "b", T0)
    book.add(100, "c", T0)
    book.advance(T0 + 10)
    ended = book.stop_ringing(reason)
    assert ended is not None and ended.reason is reason
    assert sorted(t.name for t in ended.timers) == ["a", "b"]
    assert not book.is_ringing and [t.name for t in book.running()] == ["c"]
    assert book.stop_ringing(reason) is None


def test_ring_stoppers_are_the_physical_inputs() -> None:
    assert frozenset({StopReason.BUTTON, StopReason.WAKE_WORD, StopReason.VOICE}) == RING_STOPPERS


def test_cancel_by_name_number_label_or_alone() -> None:
    book = TimerBook()
    pasta = book.add(600, "Pasta", T0)
    eggs = book.add(300, "", T0)
    with pytest.raises(TimerError, match=r"there are 2 timers \(5 minutes timer, Pasta\)"):
        book.cancel("", T0)
    assert book.cancel("pasta", T0)[0].id == pasta.id  # names match case-insensitively
    with pytest.raises(TimerError, match="there is no timer called pasta"):
        book.cancel("pasta", T0)
    other = book.add(60, "x", T0)
    assert book.cancel(f"timer {other.id}", T0)[0].id == other.id
    assert book.cancel("", T0)[0].id == eggs.id  # the only one left
    with pytest.raises(TimerError, match="there are no timers"):
        book.cancel("", T0)
    book.add(300, "", T0)
    assert book.cancel("5 minutes timer", T0)[0].label == "5 minutes timer"


def test_cancelling_a_ringing_timer_ends_its_ring() -> None:
    book = TimerBook()
    book.add(5, "tea", T0)
    book.advance(T0 + 5)
    timer, ended = book.cancel("tea", T0 + 6)
    assert ended == RingEnded((timer,), StopReason.CANCELLED)
    assert not book.is_ringing


@pytest.mark.parametrize(
    ("duration", "name", "says"),
    [
        (0, "", "at least one second"),
        (float("nan"), "", "at least one second"),
        (86_401, "", "at most 24 hours"),
    ],
)
def test_bad_timers_are_refused_with_a_reason(duration: float, name: str, says: str) -> None:
    book = TimerBook(max_duration_s=86_400)
    with pytest.raises(TimerError, match=says):
        book.add(duration, name, T0)


def test_names_are_unique_and_the_count_is_bounded() -> None:
    book = TimerBook(max_timers=2)
    book.add(60, "pasta", T0)
    with pytest.raises(TimerError, match="already a timer called PASTA"):
        book.add(60, "PASTA", T0)
    book.add(60, "", T0)
    with pytest.raises(TimerError, match="already 2 timers"):
        book.add(60, "", T0)


def test_describe_duration() -> None:
    assert describe_duration(5400) == "1 hour 30 minutes"
    assert describe_duration(61) == "1 minute 1 second"
    assert describe_duration(0.2) == "0 seconds"


# --------------------------------------------------------------------------- restart


def test_restart_keeps_running_timers_on_their_wall_clock_time() -> None:
    before = TimerBook()
    timer = before.add(600, "pasta", T0)
    saved = json.loads(json.dumps(before.to_json()))
    after = TimerBook()
    assert after.restore(saved, T0 + 200) == []  # restarted 200 s later
    assert [t.due_at for t in after.running()] == [timer.due_at]
    assert after.running()[0].remaining_s(T0 + 200) == 400
    assert after.add(5, "", T0 + 200).id == timer.id + 1  # ids are not reused


def test_a_timer_due_during_a_short_outage_rings_at_start_for_the_rest_of_its_window() -> None:
    before = TimerBook(RingPolicy(max_ring_s=900))
    before.add(60, "tea", T0)
    after = TimerBook(RingPolicy(max_ring_s=900))
    events = after.restore(before.to_json(), T0 + 60 + 30)
    assert len(events) == 1 and isinstance(events[0], TimerFired)
    assert events[0].late_s == 30
    assert after.is_ringing and after.next_deadline() == T0 + 60 + 900
    assert after.advance(T0 + 60 + 30) == []  # it rings once, not again


def test_a_timer_long_past_is_missed_not_rung_and_reported_once() -> None:
    before = TimerBook(RingPolicy(max_ring_s=900))
    before.add(60, "tea", T0)
    after = TimerBook(RingPolicy(max_ring_s=900))
    events = after.restore(before.to_json(), T0 + 3600)
    assert len(events) == 1 and isinstance(events[0], TimerMissed)
    assert not after.is_ringing and after.next_deadline() is None
    again = TimerBook()
    assert again.restore(after.to_json(), T0 + 3700) == []  # missed stays missed, silently
    assert [t.name for t in again.missed()] == ["tea"]
    assert [t.name for t in again.acknowledge_missed()] == ["tea"]
    assert again.missed() == []


def test_missed_timers_are_dropped_after_a_day() -> None:
    book = TimerBook()
    before = TimerBook()
    before.add(60, "tea", T0)
    book.restore(before.to_json(), T0 + 3600)
    book.advance(T0 + 3600 + 86_399)
    assert book.missed()
    book.advance(T0 + 3600 + 86_400)
    assert book.missed() == []


def test_a_damaged_store_loses_only_the_damaged_entry() -> None:
    before = TimerBook()
    before.add(600, "pasta", T0)
    data = before.to_json()
    data["timers"].append({"id": "x"})
    after = TimerBook()
    after.restore(data, T0)
    assert [t.name for t in after.running()] == ["pasta"]
    assert after.restore({"version": 99}, T0) == [] and after.running() == []
    assert after.restore(None, T0) == []


# --------------------------------------------------------------------------- ring sound


def test_ring_policy_repeats_the_cue_each_period() -> None:
    policy = RingPolicy(cue_period_s=2.0)
    assert policy.cue_due(None, 5.0)
    assert not policy.cue_due(5.0, 6.9)
    assert policy.cue_due(5.0, 7.0)
    # The cue fits in its period, so repetitions never overlap.
    assert len(render_cue(Cue.TIMER)) / 24_000 < policy.cue_period_s / 2


def test_ringing_leds_differ_from_every_state() -> None:
    ringing = timer_ringing_pattern()
    for state in AgentState:
        assert pattern_for(state) != ringing, state


# --------------------------------------------------------------------------- service, tools


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_service(tmp_path: Path, clock: FakeClock, events: list[Any] | None = None):
    book = TimerBook(RingPolicy(max_ring_s=900, cue_period_s=0.05))
    store = TimerStore(tmp_path / TIMERS_FILE)
    listener = events.append if events is not None else None
    # One fake clock for both: the tests' "downtime" moves the wall clock too.
    return TimerService(book, store, clock=clock, wall_clock=clock, listener=listener)


def test_tools_set_list_cancel_and_the_file_survives_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()

    async def first_run() -> None:
        service = make_service(tmp_path, clock)
        await service.load()
        registry = ToolRegistry(timer_tools(service))
        assert registry.names() == ["set_timer", "list_timers", "cancel_timer"]
        ok = await registry.call("set_timer", {"minutes": 10, "name": "pasta"})
        assert ok["ok"] is True and ok["timer"]["name"] == "pasta"
        assert ok["timer"]["duration"] == "10 minutes"
        await registry.call("set_timer", {"hours": 1, "seconds": 30})
        listing = await registry.call("list_timers", {})
        assert [t["name"] for t in listing["running"]] == ["pasta", "1 hour 30 seconds timer"]
        assert listing["running"][0]["remaining_s"] == 600
        cancelled = await registry.call("cancel_timer", {"name": "1 hour 30 seconds timer"})
        assert cancelled["ok"] is True

    asyncio.run(first_run())
    saved = json.loads((tmp_path / TIMERS_FILE).read_text())
    assert [t["name"] for t in saved["timers"]] == ["pasta"]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporary file

    clock.now += 120  # the daemon was down for two minutes

    async def second_run() -> dict[str, Any]:
        service = make_service(tmp_path, clock)
        assert await service.load() == []
        return await ToolRegistry(timer_tools(service)).call("list_timers", {})

    listing = asyncio.run(second_run())
    assert [(t["name"], t["remaining_s"]) for t in listing["running"]] == [("pasta", 480)]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ({}, "say how long"),
        ({"minutes": -5}, "minutes must be zero or more"),
        ({"minutes": "ten"}, "minutes must be a number"),
        ({"seconds": True}, "seconds must be a number"),
        ({"seconds": 0}, "at least one second"),
        ({"hours": 48}, "at most 24 hours"),
        ({"minutes": 1, "name": 7}, "name must be text"),
    ],
)
def test_bad_set_timer_arguments_are_error_results(
    tmp_path: Path, args: dict[str, Any], says: str
) -> None:
    service = make_service(tmp_path, FakeClock())
    result = asyncio.run(ToolRegistry(timer_tools(service)).call("set_timer", args))
    assert set(result) == {"error"} and says in result["error"]


def test_cancel_unknown_name_is_an_error_result(tmp_path: Path) -> None:
    service = make_service(tmp_path, FakeClock())

    async def main() -> dict[str, Any]:
        await service.set(60, "tea")
        return await ToolRegistry(timer_tools(service)).call("cancel_timer", {"name": "pizza"})

    result = asyncio.run(main())
    assert result == {"error": "there is no timer called pizza (timers: tea)"}


def test_parse_duration_sums_units_and_accepts_numeric_text() -> None:
    assert parse_duration({"hours": 1, "minutes": 2.5, "seconds": "3"}) == 3600 + 150 + 3


def test_list_reports_missed_timers_once(tmp_path: Path) -> None:
    clock = FakeClock()
    events: list[Any] = []

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        service = make_service(tmp_path, clock)
        await service.set(60, "tea")
        clock.now += 7200
        restarted = make_service(tmp_path, clock, events)
        await restarted.load()
        registry = ToolRegistry(timer_tools(restarted))
        return await registry.call("list_timers", {}), await registry.call("list_timers", {})

    first, second = asyncio.run(main())
    assert [type(e) for e in events] == [TimerMissed]
    assert [t["name"] for t in first["missed_while_off"]] == ["tea"]
    assert "missed_while_off" not in second


def test_ringer_rings_repeats_and_stops_on_the_button(tmp_path: Path) -> None:
    """Real asyncio loop and the real wall clock, with a short timer."""
    import time

    cues: list[float] = []
    shown: list[bool] = []
    events: list[Any] = []

    async def main() -> None:
        service = make_service(tmp_path, FakeClock(), events)
        service.clock = time.time
        ringer = TimerRinger(service, lambda: cues.append(time.monotonic()), shown.append)
        task = asyncio.create_task(ringer.run())
        try:
            await service.set(1, "egg")
            await asyncio.sleep(1.4)
            assert shown == [True] and len(cues) >= 4  # the cue repeats every 0.05 s
            ended = await service.stop_ringing(StopReason.BUTTON)
            assert ended is not None
            await asyncio.sleep(0.2)
            count = len(cues)
            await asyncio.sleep(0.3)
            assert len(cues) == count  # silent after the button
            assert shown == [True, False]
        finally:
            task.cancel()

    asyncio.run(main())
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["TimerFired", "RingEnded"]
    assert events[1].reason is StopReason.BUTTON
    saved = json.loads((tmp_path / TIMERS_FILE).read_text())
    assert saved["timers"] == []


# --------------------------------------------------------------------------- clock jumps

HOURS = 3600.0


def clock_service(
    tmp_path: Path, mono: FakeClock, wall: FakeClock, boot: str, events: list[Any] | None = None
) -> TimerService:
    book = TimerBook(RingPolicy(max_ring_s=900, cue_period_s=0.05))
    return TimerService(
        book,
        TimerStore(tmp_path / TIMERS_FILE),
        clock=mono,
        wall_clock=wall,
        boot_id=lambda: boot,
        listener=events.append if events is not None else None,
    )


@pytest.mark.shelf
@pytest.mark.parametrize("jump_s", [5 * HOURS, -5 * HOURS], ids=["forward", "backward"])
def test_a_wall_clock_step_while_running_neither_rings_early_nor_late(
    tmp_path: Path, jump_s: float
) -> None:
    """NTP steps the wall clock by hours under a running 10-minute timer: it rings after
    10 minutes of monotonic time, not at the step nor hours later."""
    mono, wall = FakeClock(100.0), FakeClock(T0)

    async def main() -> list[list[Any]]:
        service = clock_service(tmp_path, mono, wall, "boot-a")
        await service.load()
        await service.set(600, "pasta")
        await service.set(1200, "rice")
        wall.now += jump_s
        at_step = await service.advance()
        mono.now += 599
        wall.now += 599
        before_due = await service.advance()
        mono.now += 1
        wall.now += 1
        due = await service.advance()
        return [at_step, before_due, due]

    at_step, before_due, due = asyncio.run(main())
    assert at_step == [] and before_due == []
    assert [(type(e), e.timer.name) for e in due] == [(TimerFired, "pasta")]


@pytest.mark.shelf
def test_a_daemon_restart_in_the_same_boot_keeps_monotonic_due_times_across_a_step(
    tmp_path: Path,
) -> None:
    mono, wall = FakeClock(100.0), FakeClock(T0)

    async def main() -> float:
        first = clock_service(tmp_path, mono, wall, "boot-a")
        await first.load()
        await first.set(600, "pasta")
        mono.now += 100
        wall.now += 100 + 3 * HOURS  # NTP stepped while the daemon was restarting
        again = clock_service(tmp_path, mono, wall, "boot-a")
        assert await again.load() == []
        return again.book.running()[0].remaining_s(mono.now)

    assert asyncio.run(main()) == 500


@pytest.mark.shelf
def test_after_a_reboot_timers_follow_the_wall_clock_that_ntp_corrects(tmp_path: Path) -> None:
    """A Pi without RTC reboots with its clock where it was saved (fake-hwclock) while
    real time went on: the restored timer follows the wall clock, so NTP's step forward
    brings it due at the right real time; stepped past its whole ring window, it is
    missed (reported), not rung for an instant."""
    mono, wall = FakeClock(100.0), FakeClock(T0)
    events: list[Any] = []

    async def main() -> tuple[list[Any], list[Any], list[Any]]:
        first = clock_service(tmp_path, mono, wall, "boot-a")
        await first.load()
        await first.set(600, "pasta")
        await first.set(4 * HOURS, "roast")
        mono.now = 20.0  # rebooted; the clock reads T0 + 10 s (saved time), truth is later
        wall.now = T0 + 10
        again = clock_service(tmp_path, mono, wall, "boot-b", events)
        restored = await again.load()
        assert again.book.running()[0].remaining_s(mono.now) == 590
        mono.now += 1
        wall.now += 1 + 1200  # NTP: 20 minutes had really passed
        stepped = await again.advance()
        wall.now += 4 * HOURS  # a further step past the roast's ring window
        later = await again.advance()
        return restored, stepped, later

    restored, stepped, later = asyncio.run(main())
    assert restored == []
    assert [(type(e), e.timer.name) for e in stepped] == [(TimerFired, "pasta")]
    assert [(type(e), e.timer.name) for e in later] == [(TimerMissed, "roast")]


@pytest.mark.shelf
def test_an_old_file_without_monotonic_times_is_read_by_the_wall_clock() -> None:
    old = {
        "version": 1,
        "next_id": 2,
        "timers": [
            {"id": 1, "name": "tea", "duration_s": 60.0, "created_at": T0, "due_at": T0 + 60}
        ],
    }
    book = TimerBook()
    assert book.restore(old, 50.0, T0 + 10, "boot-a") == []
    assert book.running()[0].remaining_s(50.0) == 50

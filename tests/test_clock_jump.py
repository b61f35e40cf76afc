"""A wall clock that jumps: NTP stepping a Pi that has no real-time clock.

A Pi boots with its wall clock where it stopped (the last shutdown, days behind), and NTP
steps it forward once the network is up; a later correction or an owner may step it back.
The daemon's timers and resumption handle run on the monotonic clock, so neither step may
ring a timer early or late, lose it, or throw away the conversation.

End to end, the daemon runs under the real libfaketime (Debian package ``libfaketime``,
through the devkit ``Appliance``'s ``fake_clock_file``; ``rig.fakeclock`` says how, and
which of its faults it works around): its wall clock is the real one plus the offset in
a file, re-read at every call, and its monotonic clock is left alone, as a real step
leaves it. Rewriting the file is the step. The rig itself is checked first, then the
pure detector that logs a step (``core.clockstep``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from edge_agent.core.clockstep import ClockStep, ClockStepDetector
from edge_agent_devkit.rig import fakeclock, speech
from edge_agent_devkit.rig.appliance import Appliance, ApplianceOptions, LogLine

pytestmark = pytest.mark.shelf

TIMER_S = 10.0
needs_fake_clock = pytest.mark.skipif(
    not fakeclock.available(), reason="needs libfaketime (apt libfaketime) and gcc"
)

# Run under the fake clock: step it, and measure both clocks and what else a step touches.
CLOCK_PROBE = """
import json, subprocess, sys, threading, time
clock_file = sys.argv[1]
wall0, mono0 = time.time(), time.monotonic()
with open(clock_file, "w") as f:
    f.write("+49h\\n")
wall1, mono1 = time.time(), time.monotonic()
t = time.monotonic()
time.sleep(0.2)  # clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME): libfaketime#426
slept = time.monotonic() - t
subprocess.run([sys.executable, "-c", "pass"], timeout=30, check=True)  # sleeps too
offsets = []
def read():
    for _ in range(5000):
        offsets.append(time.time() - time.monotonic())
threads = [threading.Thread(target=read) for _ in range(4)]
for th in threads:
    th.start()
for th in threads:
    th.join()
print(json.dumps({"wall_step": (wall1 - wall0) - (mono1 - mono0), "mono_gap": mono1 - mono0,
                  "slept": slept, "spread": max(offsets) - min(offsets), "start": wall0}))
"""


@needs_fake_clock
def test_the_rig_steps_only_the_wall_clock_and_sleeps_still_work(tmp_path: Path) -> None:
    clock_file = tmp_path / "wall-offset"
    clock_file.write_text("-50h\n")
    env = {**os.environ, **fakeclock.fake_clock_env(clock_file, tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", CLOCK_PROBE, str(clock_file)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert abs(seen["start"] - (time.time() - 50 * 3600)) < 60  # booted 50 h behind
    assert abs(seen["wall_step"] - 99 * 3600) < 1  # -50 h -> +49 h: the wall clock jumped
    assert seen["mono_gap"] < 1  # the monotonic clock did not
    assert 0.19 <= seen["slept"] < 2
    assert seen["spread"] < 1  # no thread ever read the real time (the plain build does)


# ------------------------------------------------------------------- the pure detector


def test_steady_clocks_are_no_step_however_late_the_tick() -> None:
    detector = ClockStepDetector(threshold_s=2.0)
    wall0 = 1_790_000_000.0
    assert detector.observe(100.0, wall0) is None  # the first reading only sets the offset
    for mono in (100.5, 101.0, 131.0, 3700.0):  # a late tick (loop stalled 30 s) is no step
        assert detector.observe(mono, wall0 + mono - 100.0) is None


@pytest.mark.parametrize(
    ("step_s", "text"),
    [
        (50 * 3600.0, "+2.1 d"),
        (-3600.0, "-1.0 h"),
        (-3599.98, "-1.0 h"),  # the two clocks are read a moment apart: not "-60.0 min"
        (300.0, "+5.0 min"),
        (-3.25, "-3.2 s"),
    ],
)
def test_a_step_is_reported_once_with_its_size(step_s: float, text: str) -> None:
    detector = ClockStepDetector(threshold_s=2.0)
    detector.observe(10.0, 1000.0)
    step = detector.observe(10.5, 1000.5 + step_s)
    assert step is not None and step.step_s == pytest.approx(step_s)
    assert step.describe() == text
    assert detector.observe(11.0, 1001.0 + step_s) is None  # reported once, not every tick


def test_a_leap_second_and_slewing_are_no_step() -> None:
    detector = ClockStepDetector(threshold_s=2.0)
    detector.observe(0.0, 500.0)
    assert detector.observe(0.5, 499.5) is None  # a leap second inserted
    drift = 0.0
    for tick in range(1, 200):  # 500 ppm of slew, the kernel's maximum, for 100 s
        drift += 0.5 * 500e-6
        assert detector.observe(0.5 + tick * 0.5, 499.5 + tick * 0.5 + drift) is None


def test_detector_refuses_a_threshold_that_is_not_positive() -> None:
    with pytest.raises(ValueError):
        ClockStepDetector(threshold_s=0.0)
    assert ClockStep(0.0).describe() == "+0.0 s"


# ------------------------------------------------------------ the daemon, end to end


def rings_at_matches(rings_at: str, offset_h: float, remaining_s: float) -> bool:
    """Whether the daemon's "rings at HH:MM:SS" is its faked wall clock plus the time left
    (2 s of slack each way: the status was read a moment after it was computed)."""
    expected = datetime.now().astimezone() + timedelta(hours=offset_h, seconds=remaining_s)
    shown = datetime.strptime(rings_at, "%H:%M:%S").time()
    return any(
        (expected + timedelta(seconds=slack)).time().replace(microsecond=0) == shown
        for slack in (-2, -1, 0, 1, 2)
    )


def step_wall_clock(app: Appliance | None, clock_file: Path, before_h: int, after_h: int) -> None:
    """Step the daemon's wall clock from real time + ``before_h`` to real time + ``after_h``
    and check that the daemon says so, once, within a few of its half-second ticks."""
    clock_file.write_text(f"{after_h:+d}h\n")
    if app is None:  # before the daemon starts: the clock it boots with
        return
    stepped_at = time.monotonic()
    shown = re.escape(ClockStep((after_h - before_h) * 3600.0).describe())
    noticed = app.wait_log(rf"wall clock stepped by {shown} \(NTP", 5, stepped_at)
    assert noticed is not None, app.log_text()[-3000:]


def ask(app: Appliance, text: str, session: str) -> float:
    """A text turn (`edge-agent say`); checks that its session opened as ``session``
    ("new session" or "resumed") and returns when the request was sent."""
    t0 = time.monotonic()
    said = app.cli("say", text)
    assert said.returncode == 0, said.stderr
    ready = app.wait_log(r"Live session ready \((resumed|new session)", 30, t0)
    assert ready is not None, app.log_text()[-3000:]
    assert session in ready.text, ready.text
    return t0


def set_tea_timer(app: Appliance, session: str) -> LogLine:
    t0 = ask(app, "please set timer tea", session)
    set_line = app.wait_log(rf"timer tea set for {TIMER_S:.0f} seconds", 30, t0)
    assert set_line is not None, app.log_text()[-3000:]
    return set_line


def check_timer_keeps_its_time(app: Appliance, set_line: LogLine, offset_h: int) -> None:
    """After a step: the timer is still listed with its time left and the wall-clock time
    it rings at (the new one), rings at its monotonic time, and stops from the CLI."""
    running = app.status()["timers"]["running"]
    assert [t["name"] for t in running] == ["tea"], running
    left = running[0]["remaining_s"]
    assert 0 < left <= TIMER_S - (time.monotonic() - set_line.t) + 1, running
    assert rings_at_matches(running[0]["rings_at"], offset_h, left), running
    listed = app.cli("timers")
    assert listed.returncode == 0 and "tea: rings at" in listed.stdout, listed

    rang = app.wait_log(r"timer tea rings", TIMER_S + 10, set_line.t)
    assert rang is not None, app.log_text()[-3000:]
    assert 0.9 * TIMER_S <= rang.t - set_line.t <= TIMER_S + 10, rang.t - set_line.t
    stopped = app.cli("stop")
    assert stopped.returncode == 0 and "stopped the ring" in stopped.stdout, stopped
    assert app.wait_log(r"ring of tea ended: control", 10, rang.t)
    assert app.wait_log(r"Live session closed", 15, set_line.t), app.log_text()[-3000:]


@needs_fake_clock
@pytest.mark.skipif(not speech.espeak_available(), reason="espeak-ng is needed for speech")
@pytest.mark.timeout(180)
def test_wall_clock_steps_move_no_timer_and_keep_the_session(tmp_path: Path) -> None:
    """The Pi boots 50 h behind; NTP steps it forward mid-conversation while a timer runs;
    later corrections step it back, and forward again, between sessions and under a
    running timer. Every timer rings on time; every later conversation resumes."""
    clock_file = tmp_path / "wall-offset"
    step_wall_clock(None, clock_file, 0, -50)
    opts = ApplianceOptions(
        emulator_args=[
            *("--tool", "set_timer", "--tool-args", 'set_timer={"seconds": 10, "name": "tea"}'),
            *("--speech-wpm", "900"),  # the tool's spoken answer is over well before the ring
        ],
        config={
            "gemini": {"tools": ["set_timer", "list_timers"]},
            # No follow-up, and the session closes soon after a reply.
            "conversation": {"follow_up_s": 0.0, "idle_close_s": 1.0},
            "timers": {"cue_period_s": 1.0},
        },
        fake_clock_file=clock_file,
    )
    with Appliance(tmp_path / "app", opts) as app:
        app.start()
        # NTP, a few seconds after boot: +49 h while the timer runs and the reply plays.
        set_a = set_tea_timer(app, "new session")
        step_wall_clock(app, clock_file, -50, -1)
        check_timer_keeps_its_time(app, set_a, -1)
        # Between sessions, back an hour: the held handle's wall-clock age turns negative.
        step_wall_clock(app, clock_file, -1, -2)
        set_b = set_tea_timer(app, "resumed")
        # Back another hour, while the second timer runs: it must not ring an hour late.
        step_wall_clock(app, clock_file, -2, -3)
        check_timer_keeps_its_time(app, set_b, -3)
        # Between sessions, forward 3 h: the handle looks older than its 2 h by the wall.
        step_wall_clock(app, clock_file, -3, 0)
        t_last = ask(app, "how are you today", "resumed")
        assert app.wait_log(r"-> idle: reply played", 30, t_last), app.log_text()[-3000:]

        log = app.log_text()
        assert len(re.findall(r"wall clock stepped by", log)) == 4, log[-3000:]
        assert "dropping the resumption handle" not in log
        assert "came due" not in log and "Traceback" not in log, log[-3000:]
        assert app.proc is not None
        pid = app.proc.pid
        code, _ = app.stop()
        assert code == 0, log[-3000:]
        assert not list(Path("/dev/shm").glob(f"*faketime_*_{pid}"))  # the rig cleaned up
    record = app.record
    assert record is not None
    calls = [c for r in record["replies"] for c in r.get("tool_calls", [])]
    assert [c["name"] for c in calls] == ["set_timer", "set_timer"], calls
    assert [c["resumed"] for c in record["connections"]] == [False, True, True], record[
        "connections"
    ]

"""Machine faults against the real daemon (`edge-agent run` through the devkit `Appliance`):
a state directory that turns read-only or fills up, and GPIO unavailable at start.

The state directory is a real 64 KiB tmpfs mounted for the test (these tests need to be
root, which the CI container is; they skip otherwise): `mount -o remount,ro` is the
kernel's own read-only file system (what ext4 does to an SD card after I/O errors), and a
filler file written until ENOSPC is a real full disk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent_devkit.rig import speech
from edge_agent_devkit.rig.appliance import Appliance, ApplianceOptions

pytestmark = [
    pytest.mark.shelf,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not speech.espeak_available(), reason="espeak-ng is needed for speech"),
]

TIMER_TOOL_ARGS = [
    *("--tool", "set_timer", "--force-tool-call", "--tool-turn", "0"),
    *("--tool-args", 'set_timer={"seconds": 3, "name": "tea"}'),
    *("--speech-wpm", "450", "--no-espeak"),
]


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs as the state directory; unmounted at the end whatever happened."""
    path = tmp_path / "state"
    path.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(path))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {exc}")
    try:
        yield path
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)


def _fill(folder: Path) -> Path:
    """Write a filler file until the file system is full (ENOSPC)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def _statuses_since(app: Appliance, count: int) -> list[str]:
    assert app.notify is not None
    return app.notify.statuses()[count:]


def test_state_dir_read_only_then_full_keeps_working_and_saves_when_it_clears(
    small_disk: Path,
) -> None:
    state = small_disk
    opts = ApplianceOptions(
        emulator_args=TIMER_TOOL_ARGS,
        config={
            "daemon": {"state_dir": str(state)},
            "gemini": {"tools": ["set_timer", "list_timers", "cancel_timer"]},
            "conversation": {"follow_up_s": 0.0, "idle_close_s": 1.0},
            "timers": {"cue_period_s": 1.0},
        },
    )
    with Appliance(state.parent, opts) as app:
        app.start()
        assert app.notify is not None
        # The SD card goes read-only under the running daemon.
        _mount("-o", "remount,ro", str(state))
        seen = len(app.notify.statuses())
        t0 = time.monotonic()
        app.cli("mute")
        assert app.wait_state("muted", 10, t0), app.log_text()[-3000:]
        app.cli("unmute")
        assert app.wait_state("idle", 10, t0), app.log_text()[-3000:]
        assert app.cli("volume", "40").returncode == 0
        ro = f"state directory {state} is read-only"
        assert app.wait_log(rf"cannot save mute: {re.escape(ro)}", 5, t0), app.log_text()[-3000:]
        assert app.wait_log(rf"cannot save volume: {re.escape(ro)}", 5, t0)

        # A timer set by voice still rings, with nothing on disk.
        app.say(speech.wake_and_ask("set a tea timer for three seconds"))
        set_line = app.wait_log(r"timer tea set for 3 seconds", 60, t0)
        assert set_line is not None, app.log_text()[-3000:]
        assert app.wait_log(rf"cannot save timers: {re.escape(ro)}", 5, t0)
        rang = app.wait_log(r"timer tea rings", 10, set_line.t)
        assert rang is not None, app.log_text()[-3000:]
        assert 2.5 <= rang.t - set_line.t <= 4.5, rang.t - set_line.t
        assert app.cli("stop").returncode == 0
        assert app.wait_log(r"ring of tea ended", 10, rang.t)
        status = app.status()
        assert status["muted"] is False and status["volume_percent"] == 40
        assert any(ro in line and "mute" in line for line in status["unsaved"]), status
        assert app.wait_until(
            lambda: any("cannot save" in s and ro in s for s in _statuses_since(app, seen)), 5
        ), app.notify.statuses()[-5:]
        assert not (state / "volume.json").exists()

        # The card is writable again: everything unsaved is written within a retry period.
        _mount("-o", "remount,rw", str(state))
        t1 = time.monotonic()
        assert app.wait_log(r"mute saved again", 10, t1), app.log_text()[-3000:]
        assert app.wait_log(r"volume saved again", 1, t1)
        assert app.wait_log(r"timers saved again", 1, t1)
        assert (state / "muted").read_text().strip() == "0"
        assert '"percent": 40' in (state / "volume.json").read_text()
        assert app.wait_until(lambda: app.status()["unsaved"] == [], 3)
        assert app.wait_until(lambda: "cannot save" not in app.notify.statuses()[-1], 3)

        # Now the disk fills up: mute still works, and is saved once there is room.
        filler = _fill(state)
        t2 = time.monotonic()
        app.cli("mute")
        assert app.wait_state("muted", 10, t2)
        full = rf"cannot save mute: state directory {re.escape(str(state))} is full"
        assert app.wait_log(full, 5, t2), app.log_text()[-3000:]
        assert (state / "muted").read_text().strip() == "0"  # the old file survived
        assert app.status()["muted"] is True
        filler.unlink()
        t3 = time.monotonic()
        assert app.wait_log(r"mute saved again", 10, t3), app.log_text()[-3000:]
        assert (state / "muted").read_text().strip() == "1"
        assert app.stop()[0] == 0
    log = app.log_text()
    # Said once per episode, not once per failed write or retry (mute failed twice read-only).
    assert len(re.findall(r"cannot save mute:", log)) == 2, log
    assert len(re.findall(r"cannot save timers:", log)) == 1
    assert not [name for name in os.listdir(state) if name.endswith(".tmp")]


def test_gpio_unavailable_at_start_runs_without_button_and_says_so_once(tmp_path: Path) -> None:
    """No pin library and not a Pi (gpiozero's own search, as on a board without GPIO
    access): the daemon starts, STATUS and `status` say why, the wake word still works."""
    opts = ApplianceOptions(gpio_pin_factory=None, emulator_args=["--no-espeak"])
    with Appliance(tmp_path, opts) as app:
        app.start()
        assert app.notify is not None
        status = app.status()
        assert status["gpio_problem"] and "no button or LEDs" in status["gpio_problem"]
        assert app.wait_until(
            lambda: any("no button or LEDs" in s for s in app.notify.statuses()), 5
        ), app.notify.statuses()
        t0 = time.monotonic()
        app.say(speech.wake_and_ask("what time is it"))
        assert app.wait_log(r"wake word hey_jarvis", 30, t0), app.log_text()[-3000:]
        assert app.wait_state("follow_up", 60, t0), app.log_text()[-3000:]
        assert app.stop()[0] == 0
    assert len(re.findall(r"GPIO unavailable \(", app.log_text())) == 1, app.log_text()


def test_microphone_vanishes_mid_turn_and_returns(tmp_path: Path) -> None:
    """The mic is pulled while the user is speaking: the turn ends cleanly (no hang), it
    is logged once, state and STATUS say the microphone is lost, and once it is back the
    next question is answered. The rig's vanished FIFO blocks its reader (as a wedged
    driver does), so the watchdog stops while capture is stuck and resumes after."""
    opts = ApplianceOptions(duplex=False, emulator_args=["--no-espeak"])
    with Appliance(tmp_path, opts) as app:
        app.start()
        assert app.notify is not None
        t0 = time.monotonic()
        app.say(
            speech.wake_and_ask("tell me a long story about the sea and the mountains and a cat")
        )
        assert app.wait_state("listening", 30, t0), app.log_text()[-3000:]
        time.sleep(0.5)  # mid-question
        app.mic.vanish()
        t_gone = time.monotonic()
        lost = app.wait_log(r"listening -> error: audio device lost: .*ea_mic", 15, t_gone)
        assert lost is not None, app.log_text()[-3000:]
        assert app.wait_log(r"Live session closed", 5, t_gone)  # the turn ended, no hang
        assert app.wait_until(
            lambda: any("microphone lost" in s for s in app.notify.statuses()), 5
        ), app.notify.statuses()[-3:]
        assert app.status()["state"] == "error"
        app.mic.reappear()
        t_back = time.monotonic()
        assert app.wait_log(r"error -> idle: audio device back", 20, t_back)
        assert app.notify.wait_for("WATCHDOG=1", 10, t_back) is not None
        assert app.wait_until(lambda: "microphone lost" not in app.notify.statuses()[-1], 5)
        t1 = time.monotonic()
        app.say(speech.wake_and_ask("what time is it"))
        assert app.wait_state("follow_up", 60, t1), app.log_text()[-3000:]
        assert app.stop()[0] == 0
    log = app.log_text()
    assert len(re.findall(r"audio device problem", log)) == 1, log
    assert len(re.findall(r"watchdog not fed", log)) <= 1, log


def test_speaker_fails_mid_reply_and_returns(tmp_path: Path) -> None:
    """The speaker fails while a reply plays (the rig's output FIFO goes: EPIPE): logged
    once, STATUS says the speaker is lost, the mic keeps listening, the turn ends (no
    hang waiting for playback), and after the speaker returns the next reply is heard."""
    opts = ApplianceOptions(
        duplex=False,
        emulator_args=["--no-espeak"],
    )
    with Appliance(tmp_path, opts) as app:
        app.start()
        assert app.notify is not None
        t0 = time.monotonic()
        app.say(speech.wake_and_ask("what time is it"))
        assert app.wait_state("speaking", 60, t0), app.log_text()[-3000:]
        time.sleep(0.3)
        app.speaker.vanish()
        t_gone = time.monotonic()
        assert app.wait_log(r"speaker 'ea_speaker' unavailable", 10, t_gone)
        assert app.wait_state("(follow_up|idle)", 30, t_gone), app.log_text()[-3000:]
        assert app.wait_until(lambda: any("speaker lost" in s for s in app.notify.statuses()), 5), (
            app.notify.statuses()[-3:]
        )
        app.speaker.reappear()
        t_back = time.monotonic()
        assert app.wait_log(r"speaker 'ea_speaker' is back", 20, t_back), app.log_text()[-3000:]
        assert app.wait_state("idle", 30, t_gone)
        t1 = time.monotonic()
        app.say(speech.wake_and_ask("and what is the date"))
        speaking = app.wait_state("speaking", 60, t1)
        assert speaking is not None, app.log_text()[-3000:]
        follow_up = app.wait_state("follow_up", 60, t1)
        assert follow_up is not None, app.log_text()[-3000:]
        # Cues on, as shipped: what the speaker drained between the reply's start and the
        # end of its playback is the reply (the wake cue played more than a second earlier;
        # the end cue comes only when the follow-up window closes).
        reply = app.speaker.samples()[
            app.speaker.samples_played_by(speaking.t) : app.speaker.samples_played_by(follow_up.t)
        ]
        assert reply.size and int(np.abs(reply.astype(np.int32)).max()) > 200, (
            "the reply after recovery was not heard"
        )
        assert app.stop()[0] == 0
    log = app.log_text()
    assert len(re.findall(r"WARNING .*speaker 'ea_speaker' unavailable", log)) == 1, log

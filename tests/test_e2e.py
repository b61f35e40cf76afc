"""End to end: `edge-agent run` as a subprocess, with real PyAudio over ALSA FIFO devices,
the real SDK against the emulator over TLS, mock GPIO and a real sd_notify socket."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.testing import speech
from edge_agent.testing.appliance import Appliance, ApplianceOptions, nonsilent_runs

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not speech.espeak_available(), reason="espeak-ng is needed for speech"),
]

VOICE = "en-us"


def phrase(text: str) -> np.ndarray:
    return speech.trim(speech.synthesize(text, voice=VOICE))


def wake_and_ask(question: str) -> np.ndarray:
    return speech.concat(
        speech.silence(0.8), phrase("hey jarvis"), speech.silence(0.15), phrase(question),
        speech.silence(0.3),
    )  # fmt: skip


FLUSH_RE = r"playback flushed at output sample (\d+), t=([\d.]+)"


def flushed_at(app: Appliance, since: float) -> float:
    """The daemon's own monotonic time of the flush (same clock across processes)."""
    line = app.wait_log(FLUSH_RE, 10, since)
    assert line is not None, app.log_text()[-3000:]
    m = re.search(FLUSH_RE, line.text)
    assert m is not None
    return float(m.group(2))


def test_conversation_follow_up_and_barge_in(tmp_path: Path) -> None:
    opts = ApplianceOptions(config={"conversation": {"cues": False}})
    with Appliance(tmp_path, opts) as app:
        app.start()
        # READY, then watchdog pings while the mic runs.
        assert app.notify is not None
        t_ready = app.notify.wait_for("READY=1", 1)
        assert t_ready is not None
        assert app.notify.wait_for("WATCHDOG=1", 10, since=t_ready) is not None

        # "hey jarvis what time is it" in one breath reaches Gemini whole, and is answered.
        t0 = time.monotonic()
        app.say(wake_and_ask("what time is it"))
        assert app.wait_log(r"wake word hey_jarvis", 30, t0), app.log_text()[-3000:]
        assert app.wait_state("follow_up", 60, t0), app.log_text()[-3000:]
        said = app.wait_log(r"you said:", 1, t0)
        assert said is not None
        runs = nonsilent_runs(app.speaker.samples())
        assert runs, "the reply never reached the speaker"
        assert sum(e - s for s, e in runs) > 0.5 * app.speaker.rate_hz  # > 0.5 s of speech

        # A follow-up without the wake word.
        t1 = time.monotonic()
        app.say(phrase("and what about the weather in the mountains tomorrow morning"))
        assert app.wait_state("listening", 30, t1), app.log_text()[-3000:]
        follow = app.wait_log(r"follow_up -> listening: speech during follow-up", 1, t1)
        assert follow is not None
        assert app.wait_state("speaking", 60, t1), app.log_text()[-3000:]

        # Barge-in by button: playback stops within one device period of the flush.
        time.sleep(0.5)
        t_press = app.press()
        assert app.wait_log(r"speaking -> listening: barge-in by button", 10, t_press)
        t_flush = flushed_at(app, t_press)
        assert t_flush >= t_press
        time.sleep(1.0)  # let the rig drain what the daemon wrote before the flush
        samples = app.speaker.samples()
        # What was already on its way to the speaker at the flush: the device buffer and
        # the rig's FIFO (both bounded in bytes), plus the callback in progress (one
        # period) and the fade-out. Anything beyond that would be reply audio played
        # after the daemon stopped it.
        at_flush = app.speaker.samples_played_by(t_flush)
        after = [r for r in nonsilent_runs(samples, gap=80) if r[1] > at_flush]
        tail = after[0][1] - at_flush if after else 0
        rate = app.speaker.rate_hz
        in_flight = app.output_in_flight_samples()
        period, fade = rate // 100, rate * 5 // 1000
        print(
            f"barge-in: reply audio ran {1000 * tail / rate:.1f} ms past the flush "
            f"(in flight {1000 * in_flight / rate:.1f} ms + period + fade)"
        )
        assert tail <= in_flight + period + fade, (tail, in_flight)
        # And after that: silence (no stale audio of the interrupted turn).
        rest = samples[at_flush + in_flight + period + fade :]
        assert rest.size > rate // 2
        assert np.abs(rest[: rate // 2].astype(np.int32)).max() < 200

        code, took = app.stop()
        assert code == 0
        assert took < 2.0, f"SIGTERM took {took:.2f} s"
        assert app.notify.count("STOPPING=1") == 1


def test_mute_by_long_press_survives_restart(tmp_path: Path) -> None:
    with Appliance(tmp_path, ApplianceOptions()) as app:
        app.start()
        # Long press through the CLI, as a person would over SSH.
        t0 = time.monotonic()
        command = ["button", "hold", "--config", str(app.config_path)]
        cli = subprocess.run(
            [sys.executable, "-m", "edge_agent", *command],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert cli.returncode == 0, cli.stderr
        assert app.wait_state("muted", 20, t0), app.log_text()[-3000:]
        assert app.status()["muted"] is True
        assert app.status()["leds"]["mute"] == "on"
        # Muted: the wake word is not heard, nothing is sent.
        t1 = time.monotonic()
        app.say(wake_and_ask("what time is it"))
        app.mic.wait_source_fed(30)
        assert app.wait_log(r"wake word", 2, t1) is None
        code, _ = app.stop()
        assert code == 0
        assert (tmp_path / "state" / "muted").read_text().strip() == "1"

    with Appliance(tmp_path / "again", ApplianceOptions(config={"daemon": {
        "state_dir": str(tmp_path / "state")}})) as app:  # fmt: skip
        app.start()
        assert app.status()["state"] == "muted"
        t2 = app.press("hold")
        assert app.wait_log(r"muted -> idle: button held: unmuted", 20, t2)


def test_reload_good_and_broken_config(tmp_path: Path) -> None:
    with Appliance(tmp_path, ApplianceOptions()) as app:
        app.start()
        assert app.notify is not None
        good = app.config_text(playback={"prefill_ms": 200}, logging={"level": "DEBUG"})
        app.config_path.write_text(good)
        t0 = time.monotonic()
        app.signal(signal.SIGHUP)
        assert app.wait_log(r"configuration reloaded", 30, t0), app.log_text()[-3000:]
        assert app.notify.wait_for("RELOADING=1", 5, t0) is not None
        assert app.notify.wait_for("READY=1", 5, t0) is not None

        app.config_path.write_text(good.replace("prefill_ms = 200", "prefill_ms = -5"))
        t1 = time.monotonic()
        app.signal(signal.SIGHUP)
        line = app.wait_log(r"reload: .*playback\.prefill_ms: must be at least 0", 30, t1)
        assert line is not None, app.log_text()[-3000:]
        assert app.wait_log(r"kept the running configuration", 5, t1)
        assert app.notify.wait_for("READY=1", 5, t1) is not None
        assert any("kept running config" in s for s in app.notify.statuses()), app.notify.messages[
            -10:
        ]
        # Still working: a conversation after the failed reload.
        t2 = time.monotonic()
        app.say(wake_and_ask("are you still there"))
        assert app.wait_state("follow_up", 60, t2), app.log_text()[-3000:]
        assert app.stop()[0] == 0


def test_frozen_mic_stops_the_watchdog(tmp_path: Path) -> None:
    with Appliance(tmp_path, ApplianceOptions(watchdog_usec=1_000_000)) as app:
        app.start()
        assert app.notify is not None
        t0 = time.monotonic()
        assert app.notify.wait_for("WATCHDOG=1", 10, t0) is not None
        app.mic.freeze()
        t_freeze = time.monotonic()
        assert app.wait_log(r"watchdog not fed: no audio captured", 20, t_freeze)
        t_stalled = time.monotonic()
        time.sleep(2.0)
        # Not one ping while the mic is frozen (systemd would restart the service).
        assert app.notify.count("WATCHDOG=1", since=t_stalled) == 0
        app.mic.unfreeze()
        t_thaw = time.monotonic()
        assert app.notify.wait_for("WATCHDOG=1", 15, t_thaw) is not None
        assert app.stop()[0] == 0


@pytest.mark.parametrize("key", [None, "wrong-key-123456"], ids=["missing", "refused"])
def test_key_problems_go_offline_with_a_clear_status(tmp_path: Path, key: str | None) -> None:
    with Appliance(tmp_path, ApplianceOptions(api_key=key)) as app:
        app.start()
        t0 = app.press()
        assert app.wait_state("offline", 30, t0), app.log_text()[-3000:]
        time.sleep(1.0)
        status = app.status()
        assert status["state"] == "offline"
        error = status["session"]["last_error"] or ""
        assert ("API key" in error) or ("no API key" in error), status
        assert app.notify is not None
        assert any("offline" in s for s in app.notify.statuses())
        if key is not None:
            assert key not in app.log_text()
            assert all(key not in s for s in app.notify.statuses())
        # Slow retries, not a loop: the emulator saw at most a couple of attempts.
        code, _ = app.stop()
        assert code == 0
    record = app.record or {}
    assert len(record.get("connections", [])) <= 2

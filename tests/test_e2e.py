"""End to end: `edge-agent run` as a subprocess, with real PyAudio over ALSA FIFO devices,
the real SDK against the emulator over TLS, mock GPIO and a real sd_notify socket."""

from __future__ import annotations

import base64
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_agent_devkit.bench import system as bench_system
from edge_agent_devkit.rig import speech
from edge_agent_devkit.rig.appliance import Appliance, ApplianceOptions, nonsilent_runs

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not speech.espeak_available(), reason="espeak-ng is needed for speech"),
]

VOICE = "en-us"


def phrase(text: str) -> np.ndarray:
    return speech.trim(speech.synthesize(text, voice=VOICE))


@dataclass(frozen=True)
class OneBreath:
    """'hey jarvis <question>' in one breath, and where its parts lie in the clip."""

    clip: np.ndarray
    wake: tuple[int, int]  # [start, end) of the wake phrase's speech
    question: tuple[int, int]  # [start, end) of the question's speech


def one_breath(question: str) -> OneBreath:
    lead, wake, pause = speech.silence(0.8), phrase("hey jarvis"), speech.silence(0.15)
    asked = phrase(question)
    clip = speech.concat(lead, wake, pause, asked, speech.silence(0.3))
    q_start = lead.size + wake.size + pause.size
    return OneBreath(clip, (lead.size, lead.size + wake.size), (q_start, q_start + asked.size))


def wake_and_ask(question: str) -> np.ndarray:
    return one_breath(question).clip


FLUSH_RE = r"playback flushed at output sample (\d+), t=([\d.]+) \((\d+) reply samples dropped\)"
READY_RE = r"Live session ready \(.*attempt (\d+), (\d+) uplink messages to \(re\)send\)"
AUDIBLE = 200  # int16 magnitude: above it a sample counts as audible
# The wake phrase's end is placed -34..+43 ms from the truth when a pause of >= 100 ms
# follows it (edge_agent/audio/wakeword.py, measured over 11 voices x 3 speeds) and
# nothing before that point goes up: at most 34 ms of "jarvis" may be sent, plus one
# 10 ms block of the consumed audio that straddles the point when it is located.
WAKE_SENT_MAX_MS = 34 + 10
# The 24 -> 16 kHz output resampler keeps under 1 ms of leftover samples and delays by
# about 2 ms, so the end of the fade-out reaches the device up to 3 ms later (see
# AudioEngine._render and tests/test_audio_engine.py).
RESAMPLER_TAIL_MS = 3


def test_conversation_follow_up_and_barge_in(tmp_path: Path) -> None:
    asked = one_breath("what time is it")
    q_start, q_end = asked.question
    # The emulator holds setupComplete for longer than the pause plus the question, and
    # the daemon only connects once it has heard the wake phrase end: the question is
    # captured while the session is not ready, so it can only arrive through the buffer.
    setup_delay_s = (q_end - asked.wake[1]) / speech.SAMPLE_RATE_HZ + 0.2
    opts = ApplianceOptions(
        # A tone for a reply: its cut at the barge-in is not hidden in a pause between
        # words (and it is still > 0.5 s of reply audio on the speaker).
        emulator_args=["--setup-delay", f"{setup_delay_s:.3f}", "--no-espeak"],
        config={"conversation": {"cues": False}},  # the speaker then holds only replies
    )
    with Appliance(tmp_path, opts) as app:
        app.start()
        assert app.options.duplex  # the barge-in bound below relies on one duplex stream
        # READY, then watchdog pings while the mic runs.
        assert app.notify is not None
        t_ready = app.notify.wait_for("READY=1", 1)
        assert t_ready is not None
        assert app.notify.wait_for("WATCHDOG=1", 10, since=t_ready) is not None

        # "hey jarvis what time is it" in one breath is answered (and reaches the
        # emulator whole: checked on its record below, once it has written it).
        t0 = time.monotonic()
        app.say(asked.clip)
        assert app.wait_log(r"wake word hey_jarvis", 30, t0), app.log_text()[-3000:]
        ready = app.wait_log(READY_RE, 30, t0)
        assert ready is not None, app.log_text()[-3000:]
        m = re.search(READY_RE, ready.text)
        assert m is not None
        # The first connection, and audio was waiting for it (the buffer was exercised).
        assert (int(m.group(1)), int(m.group(2)) > 0) == (1, True), ready.text
        assert app.wait_state("follow_up", 60, t0), app.log_text()[-3000:]
        said = app.wait_log(r"you said:", 1, t0)
        assert said is not None
        runs = nonsilent_runs(app.speaker.samples())
        assert runs, "the reply never reached the speaker"
        assert sum(e - s for s, e in runs) > 0.5 * app.speaker.rate_hz  # > 0.5 s of reply

        # A follow-up without the wake word.
        t1 = time.monotonic()
        app.say(phrase("and what about the weather in the mountains tomorrow morning"))
        assert app.wait_state("listening", 30, t1), app.log_text()[-3000:]
        follow = app.wait_log(r"follow_up -> listening: speech during follow-up", 1, t1)
        assert follow is not None
        speaking = app.wait_state("speaking", 60, t1)
        assert speaking is not None, app.log_text()[-3000:]

        # Barge-in by button, measured from the press on the speaker recording.
        rate = app.speaker.rate_hz
        period = app.device_period_samples()
        fade = rate * app.daemon_config().playback.fade_ms // 1000
        resampler = rate * RESAMPLER_TAIL_MS // 1000
        buffer = app.output_buffer_samples()
        reply_from = app.speaker.samples_played_by(speaking.t)

        def reply_audible() -> bool:  # for 0.2 s: then press (a wait, not an assertion)
            played = np.abs(app.speaker.samples()[reply_from:].astype(np.int32))
            return int((played > AUDIBLE).sum()) > rate // 5

        assert app.wait_until(reply_audible, 30), "the follow-up's reply never played"
        t_press = app.press()
        assert app.wait_log(r"speaking -> listening: barge-in by button", 10, t_press)
        flush = app.wait_log(FLUSH_RE, 10, t_press)
        assert flush is not None, app.log_text()[-3000:]
        m = re.search(FLUSH_RE, flush.text)
        assert m is not None
        assert int(m.group(3)) > 0, flush.text  # the press cut a reply with more to play
        # Where the reply must stop, in recording samples. In the duplex stream every
        # callback consumes one mic period and produces one output period, so by the
        # press the daemon had produced at most as many device samples as the rig had fed
        # the mic by then (`mic_samples_fed_by`: from the feeder's log, no clock race).
        # All of that was already in flight: in the ALSA buffer (device sample k is
        # recording sample k + buffer, see `output_buffer_samples`) or the rig's FIFO.
        # On top of it: one device period (the callback after the press, before the
        # flush takes effect: the spec's "within one device period of the press"), then
        # the fade-out and the resampler's tail of it.
        written_by_press = app.mic_samples_fed_by(t_press)
        limit = buffer + written_by_press + period + fade + resampler
        pressed_at = app.speaker.samples_played_by(t_press)
        assert app.speaker.wait_samples(limit + rate // 2, 10)
        engine = app.status()["engine"]
        fed_now = app.mic.fed_samples
        samples = np.abs(app.speaker.samples().astype(np.int32))
        before = samples[reply_from:pressed_at]
        assert (before > AUDIBLE).sum() > rate // 5, "the press did not land in the reply"
        loud = np.flatnonzero(samples[: limit + rate // 2] > AUDIBLE)
        last = int(loud[-1]) + 1  # end of the last audible reply sample
        print(
            f"barge-in: reply audio ran {1000 * (last - pressed_at) / rate:.1f} ms past the "
            f"press position, bound {1000 * (limit - pressed_at) / rate:.1f} ms: in flight "
            f"{1000 * (buffer + written_by_press - pressed_at) / rate:.1f} ms (ALSA buffer "
            f"{1000 * buffer / rate:.0f} ms) + period + fade + resampler; press -> flush "
            f"{1000 * (float(m.group(2)) - t_press):.1f} ms"
        )
        # The model behind the bound: one stream, open since the start, that never
        # produced more output than the mic had been fed.
        assert engine["reopen_count"] == 0, engine
        assert engine["played_device_samples"] <= fed_now, (engine, fed_now)
        assert last <= limit, (last, limit, pressed_at)
        # And after that: silence to the end of the recording (no stale reply audio).
        rest = samples[limit:]
        assert rest.size >= rate // 2
        assert rest.max() < AUDIBLE

        code, took = app.stop()
        assert code == 0
        assert took < 2.0, f"SIGTERM took {took:.2f} s"
        assert app.notify.count("STOPPING=1") == 1

    # The one-breath question reached the emulator whole, in the first user turn: every
    # 10 ms frame of its speech is found in the audio the emulator consumed for that turn
    # (block-wise normalised cross-correlation, as scripts/bench measures it), and at
    # most a sliver of the wake phrase went up.
    assert app.record is not None
    consumed, turns = bench_system.consumed_audio(app.record)
    assert turns, app.record["sessions"]
    first = np.frombuffer(consumed[: int(turns[0]["audio_bytes"])], dtype="<i2")
    covered = bench_system.locate_blocks(first, asked.clip)
    frame = bench_system.FRAME
    active = bench_system.active_frames(asked.clip[q_start:q_end])
    found = covered[q_start : q_start + active.size * frame].reshape(-1, frame).any(axis=1)
    missing = np.flatnonzero(active & ~found)
    wake_sent_ms = 1000 * int(covered[asked.wake[0] : asked.wake[1]].sum()) / speech.SAMPLE_RATE_HZ
    print(
        f"one breath: {int(active.sum())} speech frames of the question, {missing.size} "
        f"missing; {wake_sent_ms:.0f} ms of the wake phrase sent"
    )
    assert missing.size == 0, f"10 ms frames of the question missing: {missing.tolist()}"
    assert wake_sent_ms <= WAKE_SENT_MAX_MS


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
        muted = app.wait_state("muted", 20, t0)
        assert muted is not None, app.log_text()[-3000:]
        assert app.status()["muted"] is True
        assert app.status()["leds"]["mute"] == "on"
        # Muted: "hey jarvis what time is it" is not heard and nothing is sent.
        before = app.status()
        t1 = time.monotonic()
        _, end = app.say(wake_and_ask("what time is it"))
        # Wait until the daemon has captured past the clip, and 0.5 s more (by position:
        # its capture count never runs ahead of the rig's feed, so this is after the clip).
        rate = app.mic.rate_hz
        past = end + rate // 2
        assert app.wait_until(lambda: app.status()["captured_samples"] >= past, 60)
        after = app.status()
        assert app.wait_log(r"wake word", 0, t1) is None
        assert after["state"] == "muted", after
        # The listening pipeline saw none of it: no block, no wake word, no uplink byte.
        assert after["ears"] == before["ears"], (before["ears"], after["ears"])
        code, _ = app.stop()
        assert code == 0
        assert (tmp_path / "state" / "muted").read_text().strip() == "1"
    # And the emulator heard nothing: the long press from idle muted without opening a
    # session (idle acts on a short press's release only), so no connection at all, no
    # audio or text message, nothing consumed.
    assert app.record is not None
    assert app.record["connections"] == [], app.record["connections"]
    assert not [t for t, _, to, _ in app.transitions() if to == "connecting"]
    sent = [
        m
        for _, m in app.record["messages"]
        if "clientContent" in m
        or {"audio", "text", "activityStart"} & set(m.get("realtimeInput") or {})
    ]
    assert sent == [], sent
    assert all(s["consumed_audio_len"] == 0 for s in app.record["sessions"]), app.record

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


def _frame_gains_db(consumed: np.ndarray, clip: np.ndarray, frames: np.ndarray) -> list[float]:
    """For each 10 ms frame start in `frames`: the level (dB) of its best copy in
    `consumed` relative to the clip (-inf when no copy correlates >= 0.9)."""
    frame = bench_system.FRAME
    got = consumed.astype(np.float64)
    size = 1 << int(np.ceil(np.log2(got.size + frame)))
    got_fft = np.fft.rfft(got, size)
    energy = np.concatenate(([0.0], np.cumsum(got * got)))
    gains = []
    for start in frames:
        block = clip[start : start + frame].astype(np.float64)
        corr = np.fft.irfft(got_fft * np.conj(np.fft.rfft(block, size)), size)
        corr = corr[: got.size - frame + 1]
        seg_energy = energy[frame:] - energy[:-frame]
        ncc = corr / np.sqrt(np.maximum(seg_energy[: corr.size], 1e-9) * np.dot(block, block))
        at = int(np.argmax(ncc))
        if ncc[at] < 0.9:
            gains.append(float("-inf"))
            continue
        gains.append(10 * float(np.log10(seg_energy[at] / np.dot(block, block))))
    return gains


@pytest.mark.parametrize("gap_ms", [0, 50, 100, 200])
def test_one_breath_question_arrives_whole_with_the_shipped_defaults(
    tmp_path: Path, gap_ms: int
) -> None:
    """The product as shipped (wake cue on, echo cancellation on, voice barge-in on):
    'hey jarvis, what is the weather like tomorrow' with the question `gap_ms` after the
    wake phrase. The cue plays over the question; every 10 ms speech frame of the
    question must reach the emulator, none more than 1 dB down."""
    lead, wake = speech.silence(0.8), phrase("hey jarvis")
    asked = phrase("what is the weather like tomorrow")
    clip = speech.concat(lead, wake, speech.silence(gap_ms / 1000), asked, speech.silence(0.5))
    q_start = lead.size + wake.size + gap_ms * speech.SAMPLE_RATE_HZ // 1000
    # --no-espeak: a tone for a reply, so the test does not wait on speech synthesis.
    with Appliance(tmp_path, ApplianceOptions(emulator_args=["--no-espeak"])) as app:
        app.start()
        config = app.daemon_config()
        assert config.conversation.cues and config.echo.enabled and config.echo.voice_barge_in
        t0 = time.monotonic()
        app.say(clip)
        assert app.wait_log(r"wake word hey_jarvis", 30, t0), app.log_text()[-3000:]
        assert app.wait_state("follow_up", 60, t0), app.log_text()[-3000:]
        cue = app.wait_log(r"idle -> (connecting|listening)", 0, t0)
        assert cue is not None
        assert app.stop()[0] == 0
    assert app.record is not None
    consumed, turns = bench_system.consumed_audio(app.record)
    assert turns, app.record["sessions"]
    first = np.frombuffer(consumed[: int(turns[0]["audio_bytes"])], dtype="<i2")
    frame = bench_system.FRAME
    active = bench_system.active_frames(asked)
    starts = q_start + np.flatnonzero(active) * frame
    gains = np.array(_frame_gains_db(first, clip, starts))
    missing = np.flatnonzero(np.isinf(gains))
    down = np.flatnonzero(gains < -1.0)
    print(
        f"gap {gap_ms} ms: {starts.size} speech frames of the question, {missing.size} "
        f"missing, {down.size} more than 1 dB down (lowest {gains.min():.1f} dB)"
    )
    assert missing.size == 0, f"frames missing (10 ms index in the question): {missing}"
    assert down.size == 0, f"frames attenuated: {[(int(i), round(gains[i], 1)) for i in down]}"


LEGACY_MODELS = ["gemini-2.5-flash-native-audio-preview-12-2025", "gemini-3.1-flash-live-preview"]


@pytest.mark.parametrize("model", LEGACY_MODELS)
def test_one_turn_conversation_under_a_legacy_model_profile(tmp_path: Path, model: str) -> None:
    """The shipped config with only `gemini.model` changed: the setup is built from that
    family's profile (the emulator enforces its rules) and the question is answered."""
    opts = ApplianceOptions(
        emulator_args=["--no-espeak"],
        config={"gemini": {"model": model}},
    )
    with Appliance(tmp_path, opts) as app:
        app.start()
        t0 = time.monotonic()
        app.say(wake_and_ask("what time is it"))
        assert app.wait_log(READY_RE, 30, t0), app.log_text()[-3000:]
        assert app.wait_state("follow_up", 60, t0), app.log_text()[-3000:]
        # > 0.5 s of the reply (its 440 Hz tone, so the cues do not count).
        level = bench_system.reply_tone_level(app.speaker.samples(), app.speaker.rate_hz)
        assert (level > bench_system.SILENCE_THRESHOLD).sum() > 0.5 * app.speaker.rate_hz
        assert app.stop()[0] == 0
    record = app.record or {}
    assert [c["model"] for c in record["connections"]] == [model]
    assert record["replies"] and record["replies"][0]["completed"]


def test_model_retired_mid_life_next_wake_is_answered_by_the_fallback(tmp_path: Path) -> None:
    """The service retires gemini-3.8-live while the device sits idle: the next wake is
    answered through gemini.fallback_models, every speech frame of that question reaches
    the server, and one WARNING names both models."""
    fallback = "gemini-3.1-flash-live-preview"
    opts = ApplianceOptions(
        emulator_args=["--no-espeak"],
        config={
            "gemini": {"fallback_models": [fallback]},
            # Shortened: the session closes soon after the first answer, so the second
            # wake opens a new connection (where the retired model is refused).
            "conversation": {"follow_up_s": 0.0, "idle_close_s": 1.0},
        },
    )
    second = one_breath("and what is the date today")
    with Appliance(tmp_path, opts) as app:
        app.start()
        assert app.daemon_config().gemini.model == "gemini-3.8-live"  # the shipped default
        t0 = time.monotonic()
        app.say(wake_and_ask("what time is it"))
        # follow_up_s = 0: straight back to idle once the reply has played.
        assert app.wait_state("(follow_up|idle)", 60, t0), app.log_text()[-3000:]
        assert app.wait_log(r"Live session closed", 30, t0), app.log_text()[-3000:]
        app.retire_model("gemini-3.8-live")
        t1 = time.monotonic()
        app.say(second.clip)
        gone = app.wait_log(r"gemini-3\.8-live is gone", 30, t1)
        assert gone is not None and fallback in gone.text, app.log_text()[-3000:]
        assert "WARNING" in gone.text
        assert app.wait_log(READY_RE, 30, t1), app.log_text()[-3000:]
        assert app.wait_state("(follow_up|idle)", 60, t1), app.log_text()[-3000:]
        # `edge-agent status` and systemd's STATUS line show the replacement.
        session = app.status()["session"]
        assert (session["model"], session["configured_model"]) == (fallback, "gemini-3.8-live")
        assert "gemini-3.8-live" in session["model_note"]
        assert app.notify is not None
        assert any(f"model: {fallback}" in line for line in app.notify.statuses())
        assert app.stop()[0] == 0
    assert len(re.findall(r"gemini-3\.8-live is gone", app.log_text())) == 1  # one WARNING
    record = app.record or {}
    models = [c["model"] for c in record["connections"]]
    assert models == ["gemini-3.8-live", "gemini-3.8-live", fallback], models
    assert record["connections"][1]["close_code"] == 1008
    last = record["sessions"][-1]
    consumed = np.frombuffer(base64.b64decode(last["consumed_audio_b64"]), dtype="<i2")
    q_start, q_end = second.question
    frame = bench_system.FRAME
    active = bench_system.active_frames(second.clip[q_start:q_end])
    gains = np.array(
        _frame_gains_db(consumed, second.clip, q_start + np.flatnonzero(active) * frame)
    )
    assert not np.isinf(gains).any(), "frames of the question missing on the fallback model"
    assert (gains >= -1.0).all(), gains.min()

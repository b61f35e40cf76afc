"""System benchmarks: the real daemon end to end, and the Live session layer in process.

Two kinds of measurement, each on the real code path:

* **Daemon runs** (`edge-agent run` as a subprocess through
  `edge_agent_devkit.rig.appliance.Appliance`: real PyAudio over the ALSA FIFO rig, real
  openwakeword/webrtcvad/AEC3, the real google-genai SDK against the emulator subprocess
  over TLS). One scripted conversation gives `startup_ready_s`, `wake_to_uplink_lost_ms`
  (emulator `--setup-delay 0.5`), the uplink bytes, `first_audio_latency_ms`,
  `barge_in_ms` and `peak_rss_mb`; a second, shorter run with `playback.prefill_ms = 0`
  gives the first-audio baseline (a reload does not rebuild the jitter buffer, so the
  baseline needs its own process).
* **In-process LiveSession + LiveEmulator** (faster than a daemon): real espeak speech is
  streamed in real time in 20 ms chunks while the emulator drops the TCP connection or
  sends goAway mid-utterance; the emulator's consumed audio is compared chunk by chunk
  with what the client was given. The same drops give `reconnect_ready_ms` with the
  default backoff, and a drop with a fixed 3 s delay gives its baseline.

Every figure is measured in this run; a measurement that fails maps to None with an
entry in "errors" saying why. `run(quick=True)` does the same with fewer trials.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import difflib
import logging
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent_devkit.bench.report import PartReport, all_keys
from edge_agent_devkit.emulator.voice import TONE_HZ

log = logging.getLogger(__name__)

RATE_HZ = 16_000
BYTES_PER_S = RATE_HZ * 2  # 16 kHz s16le mono, what an always-streaming client sends
CHUNK_MS = 20
CHUNK_BYTES = BYTES_PER_S * CHUNK_MS // 1000
VOICE = "en-us"
WAKE = "hey jarvis"
QUESTION = "what time is it"
FOLLOW_UP = "and what is the weather like in the mountains tomorrow morning"
MORE = "tell me more about that please"
FOLLOW_UP_GAP_S = 5.0  # silence between the end of the question and the follow-up
SETUP_DELAY_S = 0.5
# Replies are a continuous tone (`--no-espeak`): a barge-in cut is then visible at once,
# not hidden in the pause between two words; nothing else measured depends on the content.
EMULATOR_ARGS = ["--pace", "1.0", "--no-espeak"]
EXTRA_BARGE_INS = 2  # full mode: more question/press rounds after the first press
FIRST_AUDIO_RE = re.compile(
    r"reply audio: first chunk arrived t=([\d.]+), first sample written t=([\d.]+)"
)
THINKING_RE = re.compile(r"state \w+ -> thinking:")
FLUSH_RE = re.compile(r"playback flushed at output sample (\d+), t=([\d.]+)")
SILENCE_THRESHOLD = 200  # int16 magnitude: above it a sample counts as audible
ACTIVE_THRESHOLD = 300  # speech.active_bounds' threshold for "speech" in a 10 ms frame
FRAME = RATE_HZ // 100  # 10 ms
MATCH_NCC = 0.9  # normalised cross-correlation for "this block is that mic audio"
CONTINUE_NCC = 0.6  # enough for the block that continues the previous match (filtering)

SYSTEM_KEYS = tuple(all_keys("system"))


def run(quick: bool = False) -> dict[str, Any]:
    """Measure the system side; see the module docstring. quick=True: fewer trials."""
    report = PartReport(keys=SYSTEM_KEYS)
    from edge_agent_devkit.rig import speech

    if not speech.espeak_available():
        report.fail(SYSTEM_KEYS, "espeak-ng is not installed")
        return report.finish()
    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-system-") as tmp:
        root = Path(tmp)
        report.guard(
            (
                "startup_ready_s",
                "wake_to_uplink_lost_ms",
                "uplink_bytes_ratio_vs_always_stream",
                "baseline_always_stream_bytes",
                "first_audio_latency_ms",
                "barge_in_ms",
                "peak_rss_mb",
            ),
            lambda: _daemon_conversation(root / "conversation", report, quick),
        )
        report.guard(
            ("baseline_first_audio_latency_ms_no_jitter_buffer",),
            lambda: _daemon_no_prefill(root / "no-prefill", report, quick),
        )
        if not quick:
            try:
                report.notes["e2e_underruns_jitter"] = _daemon_jitter(root / "jitter")
            except Exception as exc:
                log.warning("bench: end-to-end jitter runs failed: %s", exc)
                report.notes["e2e_underruns_jitter"] = f"failed: {type(exc).__name__}: {exc}"
        report.guard(
            (
                "handover_lost_audio_ms",
                "drop_lost_audio_ms",
                "reconnect_ready_ms",
                "baseline_reconnect_ready_ms_fixed_3s",
            ),
            lambda: _run_quietly(_live_faults(root / "live", report, quick)),
        )
    return report.finish()


# ---- speech ------------------------------------------------------------------------------


def _phrase(text: str) -> np.ndarray:
    from edge_agent_devkit.rig import speech

    return speech.trim(speech.synthesize(text, voice=VOICE))


def active_frames(clip: np.ndarray) -> np.ndarray:
    """Per 10 ms frame: does it hold speech (a sample above ACTIVE_THRESHOLD)?"""
    n = clip.size // FRAME
    frames = np.abs(clip[: n * FRAME].astype(np.int32)).reshape(n, FRAME)
    return frames.max(axis=1) > ACTIVE_THRESHOLD


def locate_blocks(received: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Which samples of `reference` (what the mic was fed) appear in `received`.

    `received` is what reached the emulator: VAD-gated segments of the mic signal, after
    echo cancellation, concatenated. Each audible 10 ms block of it is located in the
    reference by normalised cross-correlation: at the position that continues the previous
    block (>= CONTINUE_NCC, lenient because echo cancellation filters the signal a little),
    else anywhere (>= MATCH_NCC); a block that matches nowhere covers nothing. Returns a
    bool mask over `reference`.
    """
    covered = np.zeros(reference.size, dtype=bool)
    ref = reference.astype(np.float64)
    energy = np.concatenate(([0.0], np.cumsum(ref * ref)))
    size = 1 << int(np.ceil(np.log2(ref.size + FRAME)))
    ref_fft = np.fft.rfft(ref, size)
    expected: int | None = None
    for start in range(0, received.size - FRAME + 1, FRAME):
        block = received[start : start + FRAME].astype(np.float64)
        if np.abs(block).max() <= SILENCE_THRESHOLD:
            expected = None if expected is None else expected + FRAME
            continue
        norm_b = float(np.sqrt(np.dot(block, block)))
        pos = None
        if expected is not None and 0 <= expected <= ref.size - FRAME:
            seg = ref[expected : expected + FRAME]
            den = norm_b * float(np.sqrt(energy[expected + FRAME] - energy[expected]))
            if den > 0 and float(np.dot(block, seg)) / den >= CONTINUE_NCC:
                pos = expected
        if pos is None:
            corr = np.fft.irfft(ref_fft * np.conj(np.fft.rfft(block, size)), size)
            corr = corr[: ref.size - FRAME + 1]
            win = np.sqrt(np.maximum(energy[FRAME:] - energy[:-FRAME], 1e-9))
            ncc = corr / (win * norm_b)
            best = int(np.argmax(ncc))
            if ncc[best] >= MATCH_NCC:
                pos = best
        if pos is not None:
            covered[pos : pos + FRAME] = True
            expected = pos + FRAME
        else:
            expected = None
    return covered


# ---- daemon runs -----------------------------------------------------------------------


def consumed_audio(record: dict[str, Any]) -> tuple[bytes, list[dict[str, Any]]]:
    sessions = record.get("sessions") or []
    if not sessions:
        raise RuntimeError("the emulator recorded no session")
    session = sessions[0]
    return base64.b64decode(session["consumed_audio_b64"]), session["turns"]


def _first_audio_ms(lines: list[str]) -> tuple[list[float], int]:
    """Per reply, the first "first chunk" line after the turn went to thinking.

    The daemon logs that line whenever playback starts from idle, which also happens
    mid-reply after the buffer ran dry (with prefill 0): those restarts are counted
    separately, not as replies. Returns (latencies in ms, restarts).
    """
    out: list[float] = []
    armed, restarts = False, 0
    for text in lines:
        if THINKING_RE.search(text):
            armed = True
        m = FIRST_AUDIO_RE.search(text)
        if m:
            if armed:
                out.append(1000.0 * (float(m.group(2)) - float(m.group(1))))
                armed = False
            else:
                restarts += 1
    return out, restarts


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0  # kB -> MiB
    raise RuntimeError("VmHWM missing from /proc/PID/status")


def _wait_mic_position(app: Any, position: int, timeout: float) -> None:
    if not app.mic.wait_fed(position, timeout):
        raise RuntimeError("the mic feeder fell behind")


def _daemon_conversation(workdir: Path, report: PartReport, quick: bool) -> None:
    """One conversation through the real daemon: wake + question (setup delayed 0.5 s),
    5 s of silence, a follow-up without the wake word, a button press mid-reply (and in
    full mode more question / press rounds for more barge-in and first-audio samples)."""
    from edge_agent_devkit.rig import speech
    from edge_agent_devkit.rig.appliance import Appliance, ApplianceOptions

    wake, question, follow_up = _phrase(WAKE), _phrase(QUESTION), _phrase(FOLLOW_UP)
    lead, pause = speech.silence(0.5), speech.silence(0.15)
    clip = speech.concat(lead, wake, pause, question)
    q_offset = lead.size + wake.size + pause.size
    # The product as shipped (cues on): the reply is a 440 Hz tone and the barge-in
    # figure follows that pitch only (`reply_tone_level`), so the cues do not count.
    options = ApplianceOptions(emulator_args=[*EMULATOR_ARGS, "--setup-delay", str(SETUP_DELAY_S)])
    workdir.mkdir(parents=True, exist_ok=True)
    presses: list[_Press] = []
    with Appliance(workdir, options) as app:
        ready_s = app.start()
        report.put(
            "startup_ready_s",
            ready_s,
            "daemon process start (Popen) to READY=1 on the sd_notify socket: Python start, "
            "imports, openwakeword/VAD/AEC3 model load, PortAudio device open (ALSA FIFO rig)",
        )
        t0 = time.monotonic()
        start, _ = app.say(clip)
        wake_start, q_end = start + lead.size, start + q_offset + question.size
        if app.wait_state("follow_up", 60, t0) is None:
            raise RuntimeError("no reply to the question:\n" + app.log_text()[-2000:])
        _wait_mic_position(app, q_end + int(FOLLOW_UP_GAP_S * RATE_HZ), 30)
        t1 = time.monotonic()
        _, f_end = app.say(follow_up)
        if app.wait_state("speaking", 60, t1) is None:
            raise RuntimeError("no reply to the follow-up:\n" + app.log_text()[-2000:])
        # The follow-up's turn is closed (its reply is playing): the conversation's
        # uplink ends here, before the press opens a new turn.
        ears_uplink = int(app.status().get("ears", {}).get("uplink_bytes", 0))
        presses.append(_press_mid_reply(app))
        for _ in range(0 if quick else EXTRA_BARGE_INS):
            # After a button barge-in the daemon listens: ask again, press again.
            t2 = time.monotonic()
            app.say(_phrase(MORE))
            if app.wait_state("speaking", 60, t2) is None:
                raise RuntimeError("no reply after a barge-in:\n" + app.log_text()[-2000:])
            presses.append(_press_mid_reply(app))
        status = app.status()
        peak_mb = _vm_hwm_mb(app.proc.pid) if app.proc is not None else None
        samples = app.speaker.samples()
        rate = app.speaker.rate_hz
        transitions = app.transitions()
        with app._lines_cond:
            lines = [line.text for line in app.lines]
        code, _ = app.stop()
    record = app.record
    if record is None:
        raise RuntimeError("the emulator wrote no record")

    report.put(
        "peak_rss_mb",
        peak_mb,
        "VmHWM (peak resident set, MiB) of the `edge-agent run` process at the end of the "
        "whole conversation incl. barge-ins; the emulator subprocess is not counted",
    )
    consumed, turns = consumed_audio(record)
    # -- wake to uplink: question speech (10 ms frames) missing from the first turn.
    connect_ms = _connect_ms(transitions)
    report.guard(
        ("wake_to_uplink_lost_ms",),
        lambda: _wake_to_uplink(report, clip, q_offset, question.size, consumed, turns, connect_ms),
    )
    # -- uplink bytes over the always-streaming client's for the same stretch of audio.
    if len(turns) < 2:
        report.fail(
            ("uplink_bytes_ratio_vs_always_stream", "baseline_always_stream_bytes"),
            f"the emulator recorded {len(turns)} user turns, expected >= 2",
        )
    else:
        sent = int(turns[0]["audio_bytes"]) + int(turns[1]["audio_bytes"])
        always = (f_end - wake_start) * 2
        report.put(
            "baseline_always_stream_bytes",
            always,
            "16 kHz s16le for every mic sample from the start of 'hey jarvis' to the end of "
            f"the follow-up ({(f_end - wake_start) / RATE_HZ:.2f} s of audio: wake, question, "
            f"{FOLLOW_UP_GAP_S:.0f} s of silence during which the reply plays, follow-up)",
        )
        report.put(
            "uplink_bytes_ratio_vs_always_stream",
            sent / always,
            f"PCM bytes the emulator consumed for the question and follow-up turns ({sent}; "
            f"the daemon's own uplink counter said {ears_uplink}) over the baseline; "
            "base64/JSON framing left out on both sides",
        )
    # -- first reply chunk at the client -> first sample handed to the output device.
    firsts, restarts = _first_audio_ms(lines)
    if firsts:
        report.put(
            "first_audio_latency_ms",
            statistics.median(firsts),
            f"median of {len(firsts)} replies ({_fmt(firsts)} ms): daemon log, "
            "CLOCK_MONOTONIC from the first ModelAudioReceived event on the daemon's event loop "
            "to the PortAudio output callback that first pulled reply audio from the jitter "
            "buffer (prefill 120 ms of 40 ms chunks paced in real time + callback period); "
            "the ALSA buffer and the rig FIFO after that are not included; "
            f"playback restarts mid-reply: {restarts}",
        )
    else:
        report.fail(("first_audio_latency_ms",), "no 'reply audio: first chunk' log line")
    # -- button barge-in: press -> last audible reply sample leaving the speaker.
    report.guard(("barge_in_ms",), lambda: _barge_in(report, presses, samples, rate))
    playback = status.get("playback", {})
    report.notes["e2e_underruns"] = (
        f"daemon jitter-buffer underruns over the whole conversation: "
        f"{playback.get('underruns')} ({playback.get('underrun_samples')} silent samples), "
        f"emulator paced at real time without injected jitter; daemon exit code {code}"
    )


@dataclass
class _Press:
    t: float  # monotonic time just before the control request
    played_at: int  # speaker samples drained by then
    flush_ms: float | None  # press -> the daemon's flush (its own clock)
    in_flight: int | None  # at the flush: samples written to the device, not yet played


def _press_mid_reply(app: Any) -> _Press:
    time.sleep(0.5)  # let part of the reply play
    t_press = app.press()
    flush = app.wait_log(FLUSH_RE, 10, t_press)
    flush_ms = in_flight = None
    if flush is not None and (m := FLUSH_RE.search(flush.text)):
        t_flush = float(m.group(2))
        flush_ms = 1000 * (t_flush - t_press)
        # Device samples the daemon had written at the flush (the recording starts at
        # the same stream start) minus what the rig had played by then.
        in_flight = int(m.group(1)) - app.speaker.samples_played_by(t_flush)
    time.sleep(1.0)  # let the rig drain what was in flight at the flush
    return _Press(t_press, app.speaker.samples_played_by(t_press), flush_ms, in_flight)


def _connect_ms(transitions: list[tuple[float, str, str, str]]) -> float | None:
    """Wake word -> session ready, from the daemon's first two state changes (log times)."""
    t_wake = next((t for t, _, to, _ in transitions if to == "connecting"), None)
    t_ready = next((t for t, fr, _, _ in transitions if fr == "connecting"), None)
    return None if t_wake is None or t_ready is None else 1000 * (t_ready - t_wake)


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def _wake_to_uplink(
    report: PartReport,
    clip: np.ndarray,
    q_offset: int,
    q_len: int,
    consumed: bytes,
    turns: list[dict[str, Any]],
    connect_ms: float | None,
) -> None:
    if not turns:
        raise RuntimeError("the emulator recorded no user turn")
    first = np.frombuffer(consumed[: int(turns[0]["audio_bytes"])], dtype="<i2")
    covered = locate_blocks(first, clip)
    active = active_frames(clip[q_offset : q_offset + q_len])
    q_cov = covered[q_offset : q_offset + active.size * FRAME].reshape(-1, FRAME).any(axis=1)
    lost = active & ~q_cov
    lead_lost = 0
    for is_lost, is_active in zip(lost, active, strict=True):
        if is_active and not is_lost:
            break
        lead_lost += int(is_lost)
    wake_sent = covered[:q_offset].sum() / RATE_HZ * 1000
    report.put(
        "wake_to_uplink_lost_ms",
        10.0 * lost.sum(),
        f"10 ms frames of the question's speech (|x| > {ACTIVE_THRESHOLD}; "
        f"{int(active.sum())} frames) not found in the audio the emulator consumed for "
        f"the first turn (block-wise normalised cross-correlation >= {MATCH_NCC}); "
        f"{10 * lead_lost} ms of it at the start; emulator setupComplete delayed "
        f"{SETUP_DELAY_S} s (wake word -> session ready: "
        f"{'n/a' if connect_ms is None else f'{connect_ms:.0f}'} ms, while the question was "
        f"spoken); {wake_sent:.0f} ms of the wake phrase itself went up",
    )


def reply_tone_level(samples: np.ndarray, rate: int) -> np.ndarray:
    """Per sample, the amplitude of the emulator's reply tone (TONE_HZ) in `samples`.

    Complex demodulation then two centred 5 ms moving averages: the wake cue's notes
    (659 Hz and up) fall 40+ dB, so a cue played at a barge-in is not taken for reply
    audio; a tone's end shows at most 5 ms late.
    """
    t = np.arange(samples.size) / rate
    base = samples.astype(np.float64) * np.exp(-2j * np.pi * TONE_HZ * t)
    width = max(1, rate // 200)
    box = np.ones(width) / width
    smooth = np.convolve(np.convolve(base, box, mode="same"), box, mode="same")
    return 2.0 * np.abs(smooth)


def _barge_in(report: PartReport, presses: list[_Press], samples: np.ndarray, rate: int) -> None:
    tails, flushes, in_flight = [], [], []
    level = reply_tone_level(samples, rate)
    for i, press in enumerate(presses):
        end = presses[i + 1].played_at if i + 1 < len(presses) else samples.size
        before = level[max(0, press.played_at - rate // 20) : press.played_at]
        if before.size == 0 or before.max() <= SILENCE_THRESHOLD:
            raise RuntimeError(f"press {i} did not land during audible reply audio")
        loud = np.flatnonzero(level[press.played_at : end] > SILENCE_THRESHOLD)
        # Only the reply audio that ran on from the press (the next reply, in a later
        # round, starts after a long silence: cut at the first gap over 300 ms).
        gaps = np.flatnonzero(np.diff(loud) > rate * 3 // 10) if loud.size > 1 else []
        last = loud[gaps[0]] if len(gaps) else (loud[-1] if loud.size else -1)
        tails.append(1000.0 * (int(last) + 1) / rate)
        flushes.append(press.flush_ms)
        if press.in_flight is not None:
            in_flight.append(1000.0 * press.in_flight / rate)
    report.put(
        "barge_in_ms",
        statistics.median(tails),
        f"median of {len(tails)} presses ({_fmt(tails)} ms): button press (control socket "
        "-> mock GPIO pin, cues on as shipped) during a reply (a continuous 440 Hz tone, so "
        "the cut is not hidden in a pause between words) to the last sample where the "
        "reply tone's amplitude (demodulated, so the wake cue after the press is left out) "
        "is above "
        f"{SILENCE_THRESHOLD} drained by the speaker rig, counted in samples after the "
        f"press position; press -> daemon flush (its log time): "
        f"{_fmt([f for f in flushes if f is not None])} ms; written to the device but not "
        f"yet played at the flush: {_fmt(in_flight)} ms (the rig's FIFO runs nearly empty; "
        "a real sound card's buffer would add its own latency)",
    )


def _daemon_no_prefill(workdir: Path, report: PartReport, quick: bool) -> None:
    """Same daemon and emulator, jitter buffer prefill 0 (play as it arrives)."""
    from edge_agent_devkit.rig import speech
    from edge_agent_devkit.rig.appliance import Appliance, ApplianceOptions

    clip = speech.concat(speech.silence(0.5), _phrase(WAKE), speech.silence(0.15))
    clip = speech.concat(clip, _phrase(QUESTION))
    options = ApplianceOptions(
        emulator_args=EMULATOR_ARGS,
        config={"playback": {"prefill_ms": 0}},  # the baseline: no jitter buffer
    )
    workdir.mkdir(parents=True, exist_ok=True)
    with Appliance(workdir, options) as app:
        ready_s = app.start()
        t0 = time.monotonic()
        app.say(clip)
        if app.wait_state("follow_up", 60, t0) is None:
            raise RuntimeError("no reply to the question:\n" + app.log_text()[-2000:])
        if not quick:
            t1 = time.monotonic()
            app.say(_phrase(FOLLOW_UP))
            if app.wait_state("follow_up", 60, t1) is None:
                raise RuntimeError("no reply to the follow-up:\n" + app.log_text()[-2000:])
        with app._lines_cond:
            lines = [line.text for line in app.lines]
        app.stop()
    firsts, restarts = _first_audio_ms(lines)
    if not firsts:
        raise RuntimeError("no 'reply audio: first chunk' log line")
    report.put(
        "baseline_first_audio_latency_ms_no_jitter_buffer",
        statistics.median(firsts),
        f"median of {len(firsts)} replies ({_fmt(firsts)} ms), same measurement and emulator "
        "with [playback] prefill_ms = 0; playback restarts mid-reply (buffer ran dry, "
        f"audible gaps): {restarts}",
    )
    report.notes["startup_ready_s_second_run"] = f"{ready_s:.2f} s (the prefill-0 daemon run)"


JITTER_REPLY = (
    "Here is a longer answer, so that the reply runs for several seconds and the jitter "
    "buffer has time to show whether it keeps the audio flowing without gaps."
)


def _daemon_jitter(workdir: Path) -> str:
    """End-to-end underruns: the emulator's --message-jitter 0.04 on a long reply, through
    the daemon with the default prefill and with prefill 0 (one daemon each)."""
    from edge_agent_devkit.rig import speech
    from edge_agent_devkit.rig.appliance import Appliance, ApplianceOptions

    clip = speech.concat(speech.silence(0.5), _phrase(WAKE), speech.silence(0.15))
    clip = speech.concat(clip, _phrase(QUESTION))
    emulator_args = [
        *EMULATOR_ARGS, "--message-jitter", "0.04", "--reply-text", JITTER_REPLY, "--seed", "7",
    ]  # fmt: skip
    parts = []
    for prefill_ms in (None, 0):
        config: dict[str, dict[str, Any]] = {}
        if prefill_ms is not None:
            config["playback"] = {"prefill_ms": prefill_ms}
        run_dir = workdir / f"prefill-{'default' if prefill_ms is None else prefill_ms}"
        run_dir.mkdir(parents=True, exist_ok=True)
        with Appliance(
            run_dir, ApplianceOptions(emulator_args=emulator_args, config=config)
        ) as app:
            app.start()
            t0 = time.monotonic()
            app.say(clip)
            if app.wait_log(r"gemini said:", 90, t0) is None:  # logged at turnComplete
                raise RuntimeError("no complete reply:\n" + app.log_text()[-2000:])
            idle = app.wait_until(
                lambda: app.status().get("playback", {}).get("buffered_samples", 1) == 0, 30
            )
            playback = app.status().get("playback", {})
            app.stop()
        if not idle:
            raise RuntimeError("the reply never finished playing")
        rate = playback["sample_rate_hz"]
        reply_s = playback["pushed_samples"] / rate
        per_min = playback["underruns"] / (reply_s / 60) if reply_s else float("nan")
        parts.append(
            f"prefill {'120 (default)' if prefill_ms is None else prefill_ms} ms: "
            f"{playback['underruns']} underruns ({per_min:.1f}/min, "
            f"{1000 * playback['underrun_samples'] / rate:.0f} ms of gaps) over "
            f"{reply_s:.1f} s of reply"
        )
    return (
        "through the daemon, emulator --message-jitter 0.04 (each server message delayed "
        "max(0, U(-40, 40)) ms, delays add up in its sender), one reply each: " + "; ".join(parts)
    )


def _run_quietly(coro: Any) -> None:
    with _quiet("edge_agent.live.session"):
        asyncio.run(coro)


# ---- in-process LiveSession + emulator ----------------------------------------------------

KEY = "bench-key"


class _Events:
    """LiveSession sink: keeps (monotonic time, event), wakes waiters."""

    def __init__(self) -> None:
        self.events: list[tuple[float, object]] = []
        self._changed = asyncio.Event()

    def __call__(self, event: object) -> None:
        self.events.append((time.monotonic(), event))
        self._changed.set()

    def of(self, cls: type) -> list[tuple[float, Any]]:
        return [(t, e) for t, e in self.events if isinstance(e, cls)]

    async def wait_for(self, cls: type, count: int = 1, timeout: float = 30.0) -> float:
        """Time of the count-th event of `cls`."""
        async with asyncio.timeout(timeout):
            while True:
                found = self.of(cls)
                if len(found) >= count:
                    return found[count - 1][0]
                self._changed.clear()
                await self._changed.wait()


@dataclass
class _Trial:
    lost_ms: float
    duplicated_ms: float
    ready_ms: float | None  # fault -> next SessionReady
    retry_in_s: float | None  # the backoff delay the session chose
    resumed: bool  # the next session resumed the conversation (handle accepted)
    connections: int  # connections that carried some of the utterance


def _lost_chunks(sent: list[bytes], consumed: bytes) -> tuple[int, int]:
    """(chunks sent but never consumed, chunks consumed more than once), in order."""
    got = [consumed[i : i + CHUNK_BYTES] for i in range(0, len(consumed), CHUNK_BYTES)]
    matcher = difflib.SequenceMatcher(None, sent, got, autojunk=False)
    matched = sum(block.size for block in matcher.get_matching_blocks())
    return len(sent) - matched, len(got) - matched


async def _wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


class _LiveRig:
    """One LiveEmulator (in this loop) and LiveSessions made on demand."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.emu: Any = None
        self._count = 0

    async def __aenter__(self) -> _LiveRig:
        from edge_agent_devkit.emulator import EmulatorOptions, LiveEmulator

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.emu = LiveEmulator(
            EmulatorOptions(
                valid_api_keys=(KEY,), pace=0.0, espeak=False, ca_dir=self.workdir / "ca"
            )
        )
        await self.emu.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.emu.stop()

    def session(self, events: _Events, reconnect: Any) -> Any:
        from edge_agent.config import GeminiConfig
        from edge_agent.live.session import LiveSession

        self._count += 1
        cfg = GeminiConfig(
            base_url=self.emu.base_url, ca_file=str(self.emu.ca_pem_path), setup_timeout_s=5.0
        )
        state_dir = self.workdir / f"state-{self._count}"  # no handle from an earlier trial
        return LiveSession(cfg, reconnect, lambda: KEY, state_dir, events)


async def _speak_with_fault(
    rig: _LiveRig,
    session: Any,
    chunks: list[bytes],
    fault: Any,
    fault_at: int,
) -> tuple[float, list[bytes]]:
    """Stream `chunks` in real time as one turn; inject `fault` before chunk `fault_at`.

    Returns the fault's time. The emulator's open connections are this session's only.
    """
    session.activity_start()
    t_fault = 0.0
    start = time.monotonic()
    for i, chunk in enumerate(chunks):
        if i == fault_at:
            t_fault = time.monotonic()
            rig.emu.inject(fault)
        session.send_audio(chunk)
        delay = start + (i + 1) * CHUNK_MS / 1000 - time.monotonic()
        await asyncio.sleep(max(0.0, delay))
    session.activity_end()
    return t_fault, chunks


async def _fault_trial(
    rig: _LiveRig, reconnect: Any, chunks: list[bytes], kind: str, **params: Any
) -> _Trial:
    """A fresh session (no handle from an earlier trial), one utterance, one fault."""
    from edge_agent.core.events import SessionReady

    events = _Events()
    session = rig.session(events, reconnect)
    session.start()
    try:
        session.open()
        await events.wait_for(SessionReady)
        return await _utterance_with_fault(rig, session, events, chunks, kind, **params)
    finally:
        await session.stop()


async def _utterance_with_fault(
    rig: _LiveRig, session: Any, events: _Events, chunks: list[bytes], kind: str, **params: Any
) -> _Trial:
    """Stream one utterance with `kind` injected a third in; how much of it was lost.

    The session must be ready and be the only one connected to `rig`'s emulator.
    """
    from edge_agent.core.events import SessionLost, SessionReady, TurnCompleted
    from edge_agent_devkit.emulator import FaultSpec

    record = rig.emu.record
    sessions_before, messages_before = len(record.sessions), len(record.messages)
    readies_before = len(events.of(SessionReady))
    t_fault, sent = await _speak_with_fault(
        rig, session, chunks, FaultSpec(kind, **params), len(chunks) // 3
    )
    t_ready = await events.wait_for(SessionReady, readies_before + 1, timeout=30)
    await events.wait_for(TurnCompleted, timeout=30)
    consumed = b"".join(s.consumed_audio for s in record.sessions[sessions_before - 1 :])
    lost, dup = _lost_chunks(sent, consumed)
    lost_events = events.of(SessionLost)
    audio_conns = {
        i for i, m in record.messages[messages_before:] if "audio" in m.get("realtimeInput", {})
    }
    return _Trial(
        lost_ms=lost * CHUNK_MS,
        duplicated_ms=dup * CHUNK_MS,
        ready_ms=1000 * (t_ready - t_fault),
        retry_in_s=lost_events[0][1].retry_in_s if lost_events else None,
        resumed=events.of(SessionReady)[readies_before][1].resumed,
        connections=len(audio_conns),
    )


async def _live_faults(workdir: Path, report: PartReport, quick: bool) -> None:
    from edge_agent.config import ReconnectConfig
    from edge_agent.core.backoff import MIN_HANDOVER_UPTIME_S
    from edge_agent.core.events import SessionReady

    pcm = _phrase(FOLLOW_UP).astype("<i2").tobytes()
    pcm = pcm[: len(pcm) // CHUNK_BYTES * CHUNK_BYTES]
    chunks = [pcm[i : i + CHUNK_BYTES] for i in range(0, len(pcm), CHUNK_BYTES)]
    n_drops = 1 if quick else 5
    defaults = ReconnectConfig()
    fixed = ReconnectConfig(initial_delay_s=3.0, max_delay_s=3.0, jitter=0.0)
    async with _LiveRig(workdir / "handover") as handover_rig, _LiveRig(workdir / "drop") as rig:
        # The handover connection must be older than MIN_HANDOVER_UPTIME_S, as after a real
        # goAway (~9 min in); it ages while the drop trials run on the other emulator.
        h_events = _Events()
        h_session = handover_rig.session(h_events, defaults)
        h_session.start()
        h_session.open()
        t_h_ready = await h_events.wait_for(SessionReady)

        drops: list[_Trial] = []
        drop_errors: list[str] = []
        for _ in range(n_drops):
            try:
                drops.append(await _fault_trial(rig, defaults, chunks, "drop_tcp"))
            except Exception as exc:  # one failed trial is reported, the others still count
                drop_errors.append(f"{type(exc).__name__}: {exc}")
        try:
            fixed_trial: _Trial | str = await _fault_trial(rig, fixed, chunks, "drop_tcp")
        except Exception as exc:
            fixed_trial = f"{type(exc).__name__}: {exc}"

        wait = t_h_ready + MIN_HANDOVER_UPTIME_S + 0.5 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            # timeLeft 1 s: the client must hand over while the user is still speaking.
            handover: _Trial | str = await _utterance_with_fault(
                handover_rig, h_session, h_events, chunks, "go_away", time_left_s=1.0
            )
        except Exception as exc:
            handover = f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(Exception):
            await h_session.stop()

    utterance_s = len(pcm) / BYTES_PER_S
    spanned = [t for t in drops if t.connections >= 2]
    if len(spanned) < len(drops):
        drop_errors.append(
            f"{len(drops) - len(spanned)} drop trials did not span two connections (ignored)"
        )
    if spanned:
        report.put(
            "drop_lost_audio_ms",
            max(t.lost_ms for t in spanned),
            f"worst of {len(spanned)} trials: ms of a {utterance_s:.1f} s espeak utterance, "
            "streamed in real time as 20 ms chunks, that the emulator never consumed after "
            "drop_tcp one third in (chunk-sequence match of consumed vs sent); per trial "
            f"lost {[t.lost_ms for t in spanned]} ms, duplicated "
            f"{[t.duplicated_ms for t in spanned]} ms, resumed {[t.resumed for t in spanned]}",
        )
        readies = [t.ready_ms for t in spanned if t.ready_ms is not None]
        report.put(
            "reconnect_ready_ms",
            statistics.median(readies),
            f"median of {len(readies)} drops ({_fmt(readies)} ms) from the drop_tcp "
            "injection to the next SessionReady with the default backoff (initial 0.5 s, "
            "full jitter: first delay uniform in (0, 0.5] s, so the figure varies run to "
            f"run); backoff delays chosen: {[round(t.retry_in_s or 0, 3) for t in spanned]} s",
        )
    if drop_errors:
        report.fail(("drop_lost_audio_ms", "reconnect_ready_ms"), "; ".join(drop_errors))
        if spanned:
            report.notes["drop_trial_errors"] = "; ".join(drop_errors)
    if isinstance(fixed_trial, _Trial) and fixed_trial.ready_ms is not None:
        report.put(
            "baseline_reconnect_ready_ms_fixed_3s",
            fixed_trial.ready_ms,
            "the same drop with reconnect initial = max = 3 s, jitter 0 (one trial: "
            f"deterministic delay; backoff chosen {fixed_trial.retry_in_s} s)",
        )
    else:
        report.fail(("baseline_reconnect_ready_ms_fixed_3s",), str(fixed_trial))
    if isinstance(handover, _Trial) and handover.connections >= 2:
        report.put(
            "handover_lost_audio_ms",
            handover.lost_ms,
            f"goAway (timeLeft 1 s) one third into the same {utterance_s:.1f} s utterance on a "
            f"connection older than {MIN_HANDOVER_UPTIME_S:.0f} s (as after a real goAway); "
            "the client hands over while the user is still speaking (nothing owed, so at "
            f"once; resumed: {handover.resumed}); ms of the utterance never consumed "
            f"(duplicated: {handover.duplicated_ms} ms); goAway -> next SessionReady "
            f"{handover.ready_ms:.0f} ms",
        )
    elif isinstance(handover, _Trial):
        report.fail(("handover_lost_audio_ms",), "the utterance did not span two connections")
    else:
        report.fail(("handover_lost_audio_ms",), handover)


@contextlib.contextmanager
def _quiet(logger_name: str, level: int = logging.ERROR) -> Iterator[None]:
    """The drops are deliberate: keep their WARNING lines out of the bench output."""
    logger = logging.getLogger(logger_name)
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


if __name__ == "__main__":
    import json
    import sys

    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))

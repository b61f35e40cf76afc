"""`scripts/demo`: the whole appliance, offline, with a scripted conversation.

Runs the real daemon (`edge-agent run` in a subprocess) against the built-in Live API
emulator, with a synthesized voice as the microphone (an ALSA FIFO fed in real time),
the speaker recorded to a WAV file, and gpiozero's mock pins for the button and LEDs.
The scenario: "hey jarvis, what time is it" in one breath, a pause, a follow-up question
without the wake word, a button press in the middle of the reply (barge-in). It prints
a timeline and a summary, and exits 0 only when everything happened as expected.
"""

from __future__ import annotations

import re
import shutil
import signal
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent_devkit.rig import speech
from edge_agent_devkit.rig.appliance import Appliance, ApplianceOptions

FLUSH_RE = re.compile(r"playback flushed at output sample \d+, t=([\d.]+) \((\d+) reply samples")

QUESTION = "what time is it"
FOLLOW_UP = "and what is the weather like in the mountains tomorrow morning"
VOICE = "en-us"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


class Timeline:
    """Prints daemon events as they happen, relative to the daemon's start."""

    def __init__(self, app: Appliance) -> None:
        self.app = app
        self.shown = 0

    def flush(self, until: float | None = None) -> None:
        """Print the daemon's lines not shown yet (only those logged before `until`)."""
        with self.app._lines_cond:
            lines = self.app.lines[self.shown :]
            if until is not None:  # lines arrive in time order: keep the prefix before it
                cut = next((i for i, line in enumerate(lines) if line.t >= until), len(lines))
                lines = lines[:cut]
            self.shown += len(lines)
        for line in lines:
            text = line.text.split(": ", 1)[-1] if " edge_agent." in line.text else line.text
            if any(
                key in line.text
                for key in ("state ", "wake word", "you said", "gemini said", "ERROR", "WARNING")
            ):
                print(f"  [{line.t - self.app.started_at:6.2f} s] {text}")
                if "state " in line.text:
                    self._show_leds()

    def _show_leds(self) -> None:
        try:
            leds = self.app.status().get("leds", {})
        except OSError:
            return
        if leds:
            shown = ", ".join(f"{name}: {mode}" for name, mode in leds.items())
            print(f"  {'':10} LEDs  {shown}")

    def note(self, text: str, at: float | None = None) -> None:
        """A scenario step, in time order with the daemon's lines (`at`: monotonic time)."""
        at = time.monotonic() if at is None else at
        self.flush(until=at)
        print(f"  [{at - self.app.started_at:6.2f} s] ** {text}")


def _wait(app: Appliance, timeline: Timeline, state: str, timeout: float, since: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if app.wait_state(state, 0.2, since) is not None:
            timeline.flush()
            return True
        timeline.flush()
    return False


def run_demo(workdir: str | None = None, keep: bool = False) -> int:
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))
    print("edge-agent demo: the real daemon, offline")
    print(f"  files: {root}")
    question = speech.concat(
        speech.silence(1.0),
        speech.trim(speech.synthesize("hey jarvis", voice=VOICE)),
        speech.silence(0.15),
        speech.trim(speech.synthesize(QUESTION, voice=VOICE)),
        speech.silence(0.3),
    )
    follow_up = speech.trim(speech.synthesize(FOLLOW_UP, voice=VOICE))
    # The product as shipped (cues, echo cancellation, voice barge-in): only what this
    # machine lacks is overridden (see Appliance.forced_overrides).
    options = ApplianceOptions(duplex=True, emulator_args=["--pace", "1.0"])
    checks: list[Check] = []
    with Appliance(root, options) as app:
        ready_s = app.start()
        timeline = Timeline(app)
        timeline.note(f"READY=1 after {ready_s:.2f} s (models loaded, devices open)")

        t0 = time.monotonic()
        timeline.note(f'user: "hey jarvis, {QUESTION}" (one breath)')
        app.say(question)
        got_reply = _wait(app, timeline, "follow_up", 60, t0)
        checks.append(Check("wake word + question answered", got_reply, "reply played"))

        time.sleep(1.0)
        t1 = time.monotonic()
        timeline.note(f'user (no wake word): "{FOLLOW_UP}"')
        app.say(follow_up)
        speaking = _wait(app, timeline, "speaking", 60, t1)
        checks.append(Check("follow-up without the wake word", speaking, "reply started"))

        barge_ok, barge_detail = False, "no reply to interrupt"
        if speaking:
            # Let some of the reply play, then press the button mid-reply.
            time.sleep(0.6)
            press_t = app.press()
            timeline.note("button pressed (barge-in)", at=press_t)
            barge_ok = _wait(app, timeline, "listening", 10, press_t)
            flush = app.wait_log(FLUSH_RE, 10, press_t)
            match = FLUSH_RE.search(flush.text) if flush is not None else None
            if match is None:
                barge_ok, barge_detail = False, "the reply was not flushed"
            else:
                # The daemon's own clock: press (control socket -> mock GPIO) to the
                # flush of the reply. The wake cue plays right after it, so the speaker
                # recording cannot tell the reply's end from the cue's start; the exact
                # speaker-side figure is the bench's barge_in_ms and tests/test_e2e.py.
                flush_ms = 1000 * (float(match.group(1)) - press_t)
                dropped = int(match.group(2))
                barge_ok = barge_ok and flush_ms < 200 and dropped > 0
                barge_detail = (
                    f"reply flushed {flush_ms:.0f} ms after the press ({dropped} reply samples "
                    "dropped), then the wake cue"
                )
        checks.append(Check("barge-in by button", barge_ok, barge_detail))

        idle = _wait(app, timeline, "idle", 30, time.monotonic())
        checks.append(Check("back to idle when nobody speaks", idle, "listening window closed"))

        status = app.status()
        pings = app.notify.count("WATCHDOG=1") if app.notify else 0
        checks.append(Check("watchdog fed", pings > 0, f"{pings} WATCHDOG=1 pings"))
        said = [line.text for line in app.lines if "you said:" in line.text]
        checks.append(Check("transcripts", len(said) >= 2, f"{len(said)} user turns transcribed"))

        app.signal(signal.SIGTERM)
        code, stop_s = app.stop()
        timeline.flush()
        checks.append(
            Check("SIGTERM exit", code == 0 and stop_s < 2.0, f"exit {code} in {stop_s:.2f} s")
        )
        wav = root / "speaker.wav"
        _write_wav(wav, app.speaker.samples(), app.speaker.rate_hz)
        ears = status.get("ears", {})

    print()
    print("summary")
    for c in checks:
        print(f"  {'PASS' if c.ok else 'FAIL'}  {c.name}: {c.detail}")
    print(f"  uplink: {ears.get('uplink_bytes', 0)} bytes of speech sent")
    ok = all(c.ok for c in checks)
    if workdir or keep or not ok:
        print(f"  speaker recording: {wav}; daemon log: {root / 'daemon.log'}")
        if not workdir:
            print(f"  (files kept in {root}; delete the folder when done)")
    else:
        shutil.rmtree(root, ignore_errors=True)
        print("  (temporary files removed; --keep or --workdir DIR keeps speaker.wav)")
    print("demo " + ("passed" if ok else "FAILED: see the timeline above and daemon.log"))
    return 0 if ok else 1


def _write_wav(path: Path, samples: np.ndarray, rate_hz: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(samples.astype("<i2").tobytes())


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="edge-agent-demo", description="the whole appliance offline against the emulator"
    )
    parser.add_argument("--workdir", default=None, help="keep demo files here (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary files")
    args = parser.parse_args(argv)
    return run_demo(workdir=args.workdir, keep=args.keep)


if __name__ == "__main__":
    raise SystemExit(main())

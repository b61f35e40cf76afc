"""The smoke that scripts/check-arm64 runs inside its arm64 root (under QEMU user-mode).

Two roles in one file, so that only this file is copied into the root (the devkit is not
installed there):

* the driver (`/usr/bin/python3 arm64_smoke.py --out FILE ...`): stdlib only; runs each
  check in a child process of the appliance's venv Python, so a check that segfaults
  (onnxruntime under QEMU) is a FAIL with its signal, not the end of the smoke; prints one
  line per step and writes the JSON result;
* the checks (`<venv python> arm64_smoke.py --check NAME`): use the installed runtime
  (`edge_agent`) exactly as the daemon does and print one JSON line per step.

Inputs in the same folder: hey_jarvis.wav (16 kHz mono, made on the host with espeak-ng)
and hey_jarvis.json (where the wake phrase and the question are in it), emulator-ca.pem;
the emulator's URL and key in EDGE_AGENT_SMOKE_URL / EDGE_AGENT_SMOKE_KEY.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENV_PYTHON = "/opt/edge-agent/venv/bin/python"
COMMAND = "/usr/local/bin/edge-agent"  # the link install.sh makes
# The shipped config.toml, from the checkout copied into the root.
CONFIG = os.environ.get("EDGE_AGENT_SMOKE_CONFIG", "/root/edge-agent/config.toml")
CLIP = HERE / "hey_jarvis.wav"
RATE_HZ = 16_000
BLOCK = 160  # 10 ms, the daemon's capture block
DISTRIBUTIONS = (
    "numpy",
    "tflite-runtime",
    "openwakeword",
    "pyopen-wakeword",
    "pywebrtc-audio",
    "webrtcvad-wheels",
    "google-genai",
    "websockets",
    "onnxruntime",
    "scipy",
    "scikit-learn",
    "edge-agent",
)
HEAVY_MODULES = ("onnxruntime", "scipy", "sklearn")
MIN_ERLE_DB = 10.0  # 31 dB was measured on a synthetic echo under QEMU (December 2026)
TURN_TIMEOUT_S = 120.0


def emit(name: str, ok: bool, detail: str, seconds: float, **extra: Any) -> None:
    """One step's result, as the line the driver reads."""
    line = {"name": name, "ok": ok, "detail": detail, "seconds": round(seconds, 2), **extra}
    print(json.dumps(line), flush=True)


def read_clip() -> Any:
    import numpy as np

    with wave.open(str(CLIP), "rb") as f:
        if (f.getframerate(), f.getnchannels(), f.getsampwidth()) != (RATE_HZ, 1, 2):
            raise ValueError(f"{CLIP} is not 16 kHz mono s16le")
        return np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.int16)


def clip_bounds() -> dict[str, int]:
    return json.loads(CLIP.with_suffix(".json").read_text())


def loaded_heavy_modules() -> list[str]:
    return [m for m in HEAVY_MODULES if m in sys.modules]


# --------------------------------------------------------------------------- checks


def check_wake(load_only: bool) -> None:
    """Load the configured wake models; unless load_only, find "hey jarvis" in the clip."""
    from edge_agent.audio.wakeword import WakeWordDetector
    from edge_agent.config import load_config

    wake = load_config(CONFIG).wake_word
    t0 = time.monotonic()
    detector = WakeWordDetector.load(
        wake.models,
        threshold=wake.threshold,
        thresholds=wake.thresholds,
        refractory_s=wake.refractory_s,
    )
    heavy = loaded_heavy_modules()
    emit(
        "wake models",
        True,
        f"{', '.join(detector.thresholds)} loaded (tflite); imported: "
        + (", ".join(heavy) if heavy else f"none of {', '.join(HEAVY_MODULES)}"),
        time.monotonic() - t0,
        heavy_modules=heavy,
    )
    if load_only:
        return
    audio = read_clip()
    bounds = clip_bounds()
    t0 = time.monotonic()
    found = []
    for start in range(0, audio.size - BLOCK + 1, BLOCK):
        found += detector.process(audio[start : start + BLOCK], start)
    took = time.monotonic() - t0
    speed = took / (audio.size / RATE_HZ)
    jarvis = [d for d in found if d.model == "hey_jarvis"]
    peak = detector.peak_scores.get("hey_jarvis", 0.0)
    if jarvis:
        end_error_ms = (jarvis[0].end_sample - bounds["wake_end"]) * 1000 / RATE_HZ
        detail = (
            f"hey_jarvis peak score {peak:.3f}, phrase end {end_error_ms:+.0f} ms off; "
            f"{detector.frames} frames at {speed:.2f}x real time"
        )
    else:
        detail = f"no detection (peak score {peak:.3f}); {detector.frames} frames"
    emit("detect hey jarvis", bool(jarvis) and len(found) == 1, detail, took, realtime_x=speed)


def simulated_echo(far: Any) -> Any:
    """The speaker's sound at the mic: 30 ms late, 6 dB down, a short decaying tail."""
    import numpy as np

    rng = np.random.default_rng(1)
    delay = RATE_HZ * 30 // 1000
    taps = np.zeros(delay + 1600)
    taps[delay] = 0.5
    tail = rng.standard_normal(1600) * 0.08 * np.exp(-np.arange(1600) / 300)
    taps[delay + 1 :] += tail[: taps.size - delay - 1]
    echo = np.convolve(far.astype(np.float64), taps)[: far.size]
    echo += rng.standard_normal(far.size) * 3.0  # room noise, about -80 dBFS
    return np.clip(echo, -32768, 32767).astype(np.int16)


def check_audio() -> None:
    """AEC3 on the clip played back and heard as an echo; webrtcvad on the clip itself."""
    import numpy as np

    from edge_agent.audio.echo import Aec3EchoCanceller
    from edge_agent.audio.vad import WebRtcVad
    from edge_agent.config import load_config

    cfg = load_config(CONFIG)
    far = read_clip()
    bounds = clip_bounds()
    mic = simulated_echo(far)
    t0 = time.monotonic()
    aec = Aec3EchoCanceller.create()
    cleaned = np.concatenate(
        [
            aec.process(mic[i : i + BLOCK], far[i : i + BLOCK]).cleaned
            for i in range(0, far.size - BLOCK + 1, BLOCK)
        ]
    )
    took = time.monotonic() - t0
    # ERLE over the question (the last speech in the clip: AEC3 has converged by then).
    lag = aec.latency_samples
    part = slice(bounds["rest_start"], bounds["rest_end"])
    mic_part = mic[part].astype(np.float64)
    out_part = cleaned[bounds["rest_start"] + lag : bounds["rest_end"] + lag].astype(np.float64)
    erle = 10 * np.log10(np.sum(mic_part**2) / max(np.sum(out_part**2), 1.0))
    emit(
        "AEC3",
        bool(erle >= MIN_ERLE_DB),
        f"ERLE {erle:.1f} dB on the spoken question (need {MIN_ERLE_DB:.0f}); "
        f"{aec.processed_blocks} blocks of 10 ms",
        took,
        erle_db=round(float(erle), 1),
    )

    frame = RATE_HZ * cfg.vad.frame_ms // 1000
    vad = WebRtcVad(cfg.vad.aggressiveness)
    t0 = time.monotonic()
    flags = [vad.is_speech(far[i : i + frame]) for i in range(0, far.size - frame + 1, frame)]
    took = time.monotonic() - t0
    lead_end = RATE_HZ * 2  # the clip starts with 2.5 s of light noise
    in_lead = flags[: lead_end // frame]
    speech_frames = range(bounds["rest_start"] // frame, bounds["rest_end"] // frame)
    in_speech = [flags[i] for i in speech_frames]
    speech_share = sum(in_speech) / max(len(in_speech), 1)
    ok = speech_share >= 0.5 and not any(in_lead)
    emit(
        "webrtcvad",
        ok,
        f"mode {cfg.vad.aggressiveness}, {cfg.vad.frame_ms} ms frames: speech in "
        f"{speech_share:.0%} of the question, {sum(in_lead)} of {len(in_lead)} noise frames",
        took,
    )


async def _turn() -> None:
    import asyncio
    import dataclasses
    import tempfile

    from edge_agent.config import ReconnectConfig, load_config
    from edge_agent.core.events import (
        InputTranscript,
        ModelAudioReceived,
        OutputTranscript,
        SessionReady,
        TurnCompleted,
    )
    from edge_agent.live.session import LiveSession

    gemini = dataclasses.replace(
        load_config(CONFIG).gemini,
        base_url=os.environ["EDGE_AGENT_SMOKE_URL"],
        ca_file=str(HERE / "emulator-ca.pem"),
        setup_timeout_s=60.0,  # the SDK's imports and TLS run slowly under QEMU
    )
    key = os.environ["EDGE_AGENT_SMOKE_KEY"]
    audio = read_clip()
    bounds = clip_bounds()
    question = audio[bounds["wake_end"] : bounds["rest_end"] + RATE_HZ // 2].tobytes()
    events: list[Any] = []
    got = asyncio.Event()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as state_dir:
        session = LiveSession(gemini, ReconnectConfig(), lambda: key, state_dir, events.append)
        session.start()
        try:
            session.open()
            async with asyncio.timeout(TURN_TIMEOUT_S):
                while not any(isinstance(e, SessionReady) for e in events):
                    await asyncio.sleep(0.05)
                ready_s = time.monotonic() - t0
                session.activity_start()
                chunk = RATE_HZ * 2 * 20 // 1000  # 20 ms, paced as a microphone would
                for i in range(0, len(question), chunk):
                    session.send_audio(question[i : i + chunk])
                    await asyncio.sleep(0.02)
                session.activity_end()
                ended = time.monotonic()
                first_audio = None
                while not any(isinstance(e, TurnCompleted) for e in events):
                    if first_audio is None and any(
                        isinstance(e, ModelAudioReceived) for e in events
                    ):
                        first_audio = time.monotonic() - ended
                    await asyncio.sleep(0.02)
                got.set()
        finally:
            await session.stop()
    reply = b"".join(e.pcm24k for e in events if isinstance(e, ModelAudioReceived))
    heard = " ".join(" ".join(e.text.split()) for e in events if isinstance(e, InputTranscript))
    said = " ".join(" ".join(e.text.split()) for e in events if isinstance(e, OutputTranscript))
    reply_s = len(reply) / 2 / 24_000
    first = f"{first_audio * 1000:.0f} ms" if first_audio is not None else "?"
    emit(
        "Live turn",
        got.is_set() and reply_s > 0,
        f"{gemini.model}: ready in {ready_s:.1f} s, sent {len(question) / 2 / RATE_HZ:.1f} s, "
        f"reply {reply_s:.1f} s of audio (first {first} after activityEnd)"
        + (f"; heard {heard!r}" if heard else "")
        + (f"; said {said!r}" if said else ""),
        time.monotonic() - t0,
    )


def check_turn() -> None:
    """One turn through the runtime's LiveSession against the emulator on the host."""
    import asyncio

    asyncio.run(_turn())


def check_versions() -> None:
    from importlib import metadata

    found: dict[str, str | None] = {"python": platform.python_version()}
    for dist in DISTRIBUTIONS:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    print(json.dumps({"versions": found}), flush=True)


CHECKS = {
    "wake": lambda: check_wake(load_only=False),
    "wake-load": lambda: check_wake(load_only=True),
    "audio": check_audio,
    "turn": check_turn,
    "versions": check_versions,
}


# --------------------------------------------------------------------------- driver


def run_check(name: str, expected: list[str], timeout_s: float) -> list[dict[str, Any]]:
    """Run one check in the venv's Python; steps it did not report become FAILs."""
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            # faulthandler: a segfault prints the Python frame it happened in.
            [VENV_PYTHON, "-X", "faulthandler", str(Path(__file__).resolve()), "--check", name],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out, err, rc = str(exc.stdout or ""), str(exc.stderr or ""), None
    except OSError as exc:
        out, err, rc = "", str(exc), -1
    sys.stderr.write(f"--- check {name} (exit {rc})\n{err}")
    steps = []
    for line in out.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "name" in doc:
            steps.append(doc)
    if rc is None:
        why = f"timed out after {timeout_s:.0f} s"
    elif rc < 0:
        why = f"killed by {signal.Signals(-rc).name}{crash_site(err)}"
    elif rc:
        last = [ln for ln in err.splitlines() if ln.strip()]
        why = f"exit {rc}: {last[-1].strip() if last else 'no message'}"
    else:
        why = "did not report this step"
    took = time.monotonic() - t0
    reported = {s["name"] for s in steps}
    steps += [
        {"name": n, "ok": False, "detail": why, "seconds": round(took, 2)}
        for n in expected
        if n not in reported
    ]
    return steps


def crash_site(stderr: str) -> str:
    """ " in FILE (line N)" for the innermost Python frame faulthandler printed, or ""."""
    frames = re.findall(r'^\s*File "([^"]+)", line (\d+)', stderr.split("Fatal Python")[-1], re.M)
    frames = [(path, line) for path, line in frames if not path.startswith("<frozen")]
    if "Fatal Python" not in stderr or not frames:
        return ""
    path, line = frames[0]
    short = path.split("site-packages/")[-1]
    return f" in {short} (line {line})"


def command_step(name: str, argv: list[str]) -> dict[str, Any]:
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    detail = f"exit {proc.returncode}: {lines[-1] if lines else 'no output'}"
    return {
        "name": name,
        "ok": proc.returncode == 0,
        "detail": detail,
        "seconds": round(time.monotonic() - t0, 2),
    }


def versions(timeout_s: float) -> dict[str, str | None]:
    proc = subprocess.run(
        [VENV_PYTHON, str(Path(__file__).resolve()), "--check", "versions"],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith('{"versions"'):
            return json.loads(line)["versions"]
    return {"python": None}


def cpuinfo_workaround(args: argparse.Namespace) -> dict[str, Any]:
    """Whether the ARM /proc/cpuinfo was bound, and whether loading worked without it."""
    result: dict[str, Any] = {"active": bool(args.arm_cpuinfo), "needed": None, "detail": ""}
    path = Path(args.without_arm_cpuinfo) if args.without_arm_cpuinfo else None
    if path is None or not path.is_file():
        result["detail"] = "not tried without it"
        return result
    probe = json.loads(path.read_text())
    result["needed"] = not probe["ok"]
    result["detail"] = f"wake models with the host's /proc/cpuinfo: {probe['detail']}"
    return result


def print_summary(doc: dict[str, Any]) -> None:
    machine = doc["machine"]
    print(f"check-arm64 smoke on {machine['arch']} ({machine['os']}, QEMU user-mode)")
    for s in doc["steps"]:
        mark = "PASS" if s["ok"] else "FAIL"
        print(f"  {mark}  {s['name']:<18} {s['seconds']:7.1f} s  {s['detail']}")
    shown = ", ".join(f"{k} {v}" for k, v in doc["versions"].items() if v is not None)
    absent = [k for k, v in doc["versions"].items() if v is None]
    print(f"versions: {shown}" + (f" (not installed: {', '.join(absent)})" if absent else ""))
    w = doc["workarounds"]["arm_cpuinfo"]
    state = "ON (an ARM /proc/cpuinfo bound over the root's)" if w["active"] else "off"
    needed = {True: "still needed", False: "not needed", None: "need unknown"}[w["needed"]]
    print(f"workaround --arm-cpuinfo: {state}; {needed}: {w['detail']}")
    print(f"all steps passed: {'yes' if doc['all_passed'] else 'NO'}")


def drive(args: argparse.Namespace) -> int:
    timeout_s = float(args.timeout)
    steps: list[dict[str, Any]] = []
    install_ok = args.install_rc == 0
    steps.append(
        {
            "name": "install.sh",
            "ok": install_ok,
            "detail": f"scripts/install.sh --no-start: exit {args.install_rc}"
            + ("" if install_ok else f" (log: {args.install_log})"),
            "seconds": float(args.install_s),
        }
    )
    later = ["check-config", "wake models", "detect hey jarvis", "AEC3", "webrtcvad", "Live turn"]
    if install_ok:
        steps.append(command_step("check-config", [COMMAND, "check-config", CONFIG]))
        steps += run_check("wake", ["wake models", "detect hey jarvis"], timeout_s)
        steps += run_check("audio", ["AEC3", "webrtcvad"], timeout_s)
        steps += run_check("turn", ["Live turn"], timeout_s)
        found = versions(timeout_s)
    else:
        steps += [
            {"name": n, "ok": False, "detail": "not run: install failed", "seconds": 0.0}
            for n in later
        ]
        found = {"python": None}
    os_release = dict(
        line.split("=", 1)
        for line in Path("/etc/os-release").read_text().splitlines()
        if "=" in line
    )
    doc = {
        "machine": {
            "arch": platform.machine(),
            "os": os_release.get("PRETTY_NAME", "?").strip('"'),
            "debian_version": Path("/etc/debian_version").read_text().strip(),
        },
        "steps": steps,
        "versions": found,
        "workarounds": {"arm_cpuinfo": cpuinfo_workaround(args)},
        "all_passed": all(s["ok"] for s in steps),
    }
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print_summary(doc)
    return 0 if doc["all_passed"] else 1


def probe_wake(out: Path, timeout_s: float) -> int:
    """Load the wake models once (in a child) and record whether that worked."""
    (step,) = run_check("wake-load", ["wake models"], timeout_s)
    out.write_text(json.dumps(step) + "\n")
    return 0 if step["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", choices=sorted(CHECKS), help="run one check (venv Python)")
    p.add_argument("--probe-wake", metavar="OUT", help="only load the wake models; result to OUT")
    p.add_argument("--out", help="the JSON result")
    p.add_argument("--install-rc", type=int, default=0)
    p.add_argument("--install-s", type=float, default=0.0)
    p.add_argument("--install-log", default="install.log")
    p.add_argument("--arm-cpuinfo", type=int, default=0, help="1: the ARM cpuinfo is bound")
    p.add_argument("--without-arm-cpuinfo", help="--probe-wake's result, made without it")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per check")
    args = p.parse_args(argv)
    if args.check:
        CHECKS[args.check]()
        return 0
    if args.probe_wake:
        return probe_wake(Path(args.probe_wake), args.timeout)
    if not args.out:
        p.error("--out, --check or --probe-wake is needed")
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())

"""The whole appliance offline: `edge-agent run` as a subprocess against real stand-ins.

Used by the demo (`edge-agent demo`), the end-to-end tests and the benchmarks, so all
three exercise the same real code path:

- the Live API emulator (`python -m edge_agent_devkit.emulator`) over TLS on loopback;
- the ALSA rig: a real-time FIFO microphone (fed with synthesized speech) and a
  real-time FIFO speaker (recorded, with the time each sample was played);
- gpiozero's mock pin factory inside the daemon; the button is pressed through the
  daemon's control socket, which drives the mock pin;
- a real sd_notify datagram socket (READY, STATUS, WATCHDOG, ... are recorded).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.app.control import control_request
from edge_agent.config import Config, load_config
from edge_agent_devkit.rig import waiting
from edge_agent_devkit.rig.alsa_rig import AlsaRig, FifoFeeder, FifoRecorder
from edge_agent_devkit.rig.fakeclock import fake_clock_env, remove_shared_memory

# The stand-in key of every run: random per process and shaped like no real key, so a
# test can grep everything a run produced for it (tests/conftest.py does, at the end).
API_KEY = f"edge-test-key-{secrets.token_hex(8)}"
# The product as shipped: every run starts from it (devkit/edge_agent_devkit/rig/ -> root).
SHIPPED_CONFIG = Path(__file__).resolve().parents[3] / "config.toml"
STATE_RE = re.compile(r"state (\w+) -> (\w+): (.*)$")


@dataclass
class LogLine:
    t: float  # time.monotonic() when the harness read it
    text: str


@dataclass
class ApplianceOptions:
    duplex: bool = True  # echo cancellation on: one full-duplex stream at 16 kHz
    emulator_args: list[str] = field(default_factory=list)
    config: dict[str, dict[str, Any]] = field(default_factory=dict)  # overrides per section
    watchdog_usec: int | None = 2_000_000
    log_level: str = "INFO"
    api_key: str | None = API_KEY  # None: no key anywhere
    gpio_pin_factory: str | None = "mock"  # None: gpiozero's own search (no GPIO here)
    # Set: the daemon's wall clock (only) is the real one plus this file's offset ("-50h"),
    # re-read at every call: rewriting the file steps it, as NTP does (rig.fakeclock).
    fake_clock_file: Path | None = None


class Emulator:
    """`python -m edge_agent_devkit.emulator` as a subprocess."""

    def __init__(self, workdir: Path, args: list[str]) -> None:
        self.workdir = workdir
        self.args = args
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.ca_pem = ""
        self.record_path = workdir / "emulator-record.json"

    def start(self, timeout: float = 30.0) -> None:
        cmd = [
            sys.executable, "-m", "edge_agent_devkit.emulator", "--port", "0",
            "--ca-out", str(self.workdir / "ca"), "--api-key", API_KEY,
            "--record-out", str(self.record_path), "--control-stdin", *self.args,
        ]  # fmt: skip
        with open(self.workdir / "emulator.log", "w") as log:  # the child keeps its own fd
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
            )
        line = _readline_with_timeout(self.proc, timeout)
        info = json.loads(line)
        self.base_url, self.ca_pem = info["base_url"], info["ca_pem"]

    def command(self, line: str, timeout: float = 10.0) -> str:
        """Send one control command (see the emulator's `--control-stdin`) and wait for its
        acknowledgement in emulator.log; raises if it is refused or never acknowledged."""
        assert self.proc is not None and self.proc.stdin is not None
        log = self.workdir / "emulator.log"
        seen = log.read_text(errors="replace").count("control: ")
        self.proc.stdin.write(line.strip() + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            acks = [x for x in log.read_text(errors="replace").splitlines() if "control: " in x]
            if len(acks) > seen:
                if "control: error" in acks[seen]:
                    raise RuntimeError(acks[seen])
                return acks[seen]
            time.sleep(0.05)
        raise RuntimeError(f"emulator did not acknowledge {line!r}")

    def stop(self) -> dict[str, Any] | None:
        """Stop it and return its record (every message and the audio it consumed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        with contextlib.suppress(OSError, ValueError):
            return json.loads(self.record_path.read_text())
        return None


def _readline_with_timeout(proc: subprocess.Popen[str], timeout: float) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    if not result or not result[0]:
        proc.kill()
        raise RuntimeError("emulator did not start (see emulator.log)")
    return result[0]


class NotifySocket:
    """A real sd_notify socket: records every datagram with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.messages.append((time.monotonic(), data.decode(errors="replace")))
                self._cond.notify_all()

    def count(self, assignment: str, since: float = 0.0) -> int:
        with self._cond:
            return sum(1 for t, m in self.messages if t >= since and assignment in m.split("\n"))

    def wait_for(self, assignment: str, timeout: float, since: float = 0.0) -> float | None:
        """Arrival time of the first message holding `assignment` (e.g. READY=1)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, m in self.messages:
                    if t >= since and assignment in m.split("\n"):
                        return t
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def statuses(self) -> list[str]:
        with self._cond:
            return [
                line[len("STATUS=") :]
                for _, m in self.messages
                for line in m.split("\n")
                if line.startswith("STATUS=")
            ]

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(1)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class Appliance:
    """The daemon under test, with everything it talks to. Use as a context manager."""

    def __init__(self, workdir: Path, options: ApplianceOptions | None = None) -> None:
        self.workdir = Path(workdir)
        self.options = options or ApplianceOptions()
        self.rig = AlsaRig(self.workdir / "alsa")
        self.mic: FifoFeeder
        self.speaker: FifoRecorder
        if self.options.duplex:
            dev = self.rig.add_duplex("ea_duplex", rate_hz=16000)
            self.mic, self.speaker = dev.feeder, dev.recorder
            self.input_device = self.output_device = "ea_duplex"
        else:
            self.mic = self.rig.add_fifo_capture("ea_mic", 16000)
            self.speaker = self.rig.add_fifo_playback("ea_speaker", 24000)
            self.input_device, self.output_device = "ea_mic", "ea_speaker"
        self.emulator = Emulator(self.workdir, self.options.emulator_args)
        self.notify: NotifySocket | None = None
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[LogLine] = []
        self._lines_cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self.config_path = self.workdir / "config.toml"
        self.state_dir = Path(
            self.options.config.get("daemon", {}).get("state_dir", self.workdir / "state")
        )
        self.started_at = 0.0
        self.record: dict[str, Any] | None = None

    # ---------------------------------------------------------------- set up

    def forced_overrides(self) -> list[tuple[str, str, Any, str]]:
        """What a machine without hardware forces on the shipped config: (section, key,
        value, why). Everything else is the product as shipped."""
        o = self.options
        forced: list[tuple[str, str, Any, str]] = [
            ("gemini", "base_url", self.emulator.base_url, "the local Live API emulator"),
            ("gemini", "ca_file", self.emulator.ca_pem, "the emulator's throwaway CA"),
            ("gemini", "api_key_file", str(self.workdir / "no-key-file"),
             "the key comes from GEMINI_API_KEY in the environment"),
            ("gemini", "setup_timeout_s", 5.0, "shortened: tests wait out a missing setup"),
            ("audio", "input_device", self.input_device, "the ALSA rig's device"),
            ("audio", "output_device", self.output_device, "the ALSA rig's device"),
            ("audio", "duplex_rate_hz", 16000,
             "the rig's duplex device is 16 kHz: alsa-lib's 48 -> 16 kHz capture resampling"
             " is not bit-exact, and tests compare what was said with what was sent"),
            ("audio", "playback_rate_hz", 16000 if o.duplex else 24000,
             "the rig's playback device rate"),
            ("audio", "reopen_max_delay_s", 1.0, "shortened: device-loss tests"),
            ("reconnect", "initial_delay_s", 0.2, "shortened: reconnect tests"),
            ("reconnect", "max_delay_s", 2.0, "shortened: reconnect tests"),
            ("daemon", "state_dir", str(self.state_dir), "a temporary folder, not /var/lib"),
            ("daemon", "watchdog_stall_s", 2.0, "shortened: watchdog tests"),
            ("logging", "level", o.log_level, "what the harness asked for"),
            ("logging", "target", "stderr", "the harness reads the daemon's stderr"),
        ]  # fmt: skip
        if not o.duplex:
            forced.append(
                ("echo", "enabled", False, "separate-stream rig: no duplex device for AEC")
            )
        return forced

    def config_text(self, **overrides: dict[str, Any]) -> str:
        """The shipped config.toml, with what this machine forces (`forced_overrides`) and
        what the test asks for (`options.config`, then `overrides`) replaced, each marked
        with a comment saying why."""
        sections: dict[str, dict[str, Any]] = tomllib.loads(SHIPPED_CONFIG.read_text())
        why: dict[tuple[str, str], str] = {}
        for section, key, value, reason in self.forced_overrides():
            sections.setdefault(section, {})[key] = value
            why[(section, key)] = f"no hardware here: {reason}"
        for name, values in {**self.options.config, **overrides}.items():
            for key, value in values.items():
                sections.setdefault(name, {})[key] = value
                why[(name, key)] = "set by the test or bench that started this run"
        out = [f"# {SHIPPED_CONFIG.name} as shipped, with the overrides marked below"]
        for name, values in sections.items():
            out.append(f"\n[{name}]")
            for key, value in values.items():
                reason = why.get((name, key))
                comment = f"  # override: {reason}" if reason else ""
                out.append(f"{key} = {_toml(value)}{comment}")
        return "\n".join(out) + "\n"

    def start(self, timeout: float = 90.0) -> float:
        """Start everything; returns seconds from process start to READY=1."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.emulator.start()
        self.config_path.write_text(self.config_text())
        self.rig.start()
        self.notify = NotifySocket(self.workdir / "notify.sock")
        return self._start_daemon(timeout)

    def restart_daemon(self, timeout: float = 90.0) -> float:
        """Stop the daemon (SIGTERM) and start it again with the same config, emulator and
        rig; returns seconds from the new process's start to READY=1."""
        self.stop()
        return self._start_daemon(timeout)

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """`edge-agent ARGS --config <this config>` as a person would run it over SSH."""
        return subprocess.run(
            [sys.executable, "-m", "edge_agent", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.rig_env()},
        )

    def _start_daemon(self, timeout: float) -> float:
        assert self.notify is not None
        env = {
            **os.environ,
            **self.rig_env(),
            "NOTIFY_SOCKET": str(self.notify.path),
            "GPIOZERO_PIN_FACTORY": self.options.gpio_pin_factory or "",
            "GPIOZERO_MOCK_PIN_CLASS": "mockpwmpin",
            "PYTHONUNBUFFERED": "1",
        }
        if self.options.gpio_pin_factory is None:
            env.pop("GPIOZERO_PIN_FACTORY")
        env.pop("GEMINI_API_KEY", None)
        env.pop("GOOGLE_API_KEY", None)
        if self.options.api_key is not None:
            env["GEMINI_API_KEY"] = self.options.api_key
        if self.options.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.options.watchdog_usec)
        if self.options.fake_clock_file is not None:
            env.update(fake_clock_env(self.options.fake_clock_file, self.workdir))
        env.pop("INVOCATION_ID", None)
        env.pop("JOURNAL_STREAM", None)
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(self.config_path)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read_stderr, name="daemon-log", daemon=True)
        self._reader.start()
        ready = self.notify.wait_for("READY=1", timeout, since=self.started_at)
        if ready is None:
            raise RuntimeError("daemon never sent READY=1:\n" + self.log_text()[-4000:])
        return ready - self.started_at

    def rig_env(self) -> dict[str, str]:
        return {"ALSA_CONFIG_PATH": str(self.rig.config_path)}

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        with open(self.workdir / "daemon.log", "a") as logfile:
            for raw in self.proc.stderr:
                line = LogLine(time.monotonic(), raw.rstrip("\n"))
                logfile.write(raw)
                logfile.flush()
                with self._lines_cond:
                    self.lines.append(line)
                    self._lines_cond.notify_all()

    # ------------------------------------------------------------- observe

    def log_text(self) -> str:
        with self._lines_cond:
            return "\n".join(line.text for line in self.lines)

    def wait_log(
        self, pattern: str | re.Pattern[str], timeout: float, since: float = 0.0
    ) -> LogLine | None:
        """First daemon log line at or after `since` matching `pattern`."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._lines_cond:
            while True:
                for line in self.lines:
                    if line.t >= since and rx.search(line.text):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None):
                    return None
                self._lines_cond.wait(min(left, 0.5))

    def wait_state(self, state: str, timeout: float, since: float = 0.0) -> LogLine | None:
        return self.wait_log(rf"state \w+ -> {state}:", timeout, since)

    def transitions(self) -> list[tuple[float, str, str, str]]:
        with self._lines_cond:
            lines = list(self.lines)
        out = []
        for line in lines:
            m = STATE_RE.search(line.text)
            if m:
                out.append((line.t, m.group(1), m.group(2), m.group(3)))
        return out

    def status(self) -> dict[str, Any]:
        return control_request(self.state_dir / "control.sock", {"cmd": "status"})

    def retire_model(self, model: str) -> None:
        """The service retires `model` now: the next connection naming it is refused."""
        self.emulator.command(f"retire {model}")

    def press(self, action: str = "press") -> float:
        """Press the (mock) button; returns the monotonic time just before the press."""
        t = time.monotonic()
        reply = control_request(
            self.state_dir / "control.sock", {"cmd": "button", "action": action}, timeout_s=10
        )
        if not reply.get("ok"):
            raise RuntimeError(f"button {action} failed: {reply}")
        return t

    def say(self, clip: np.ndarray) -> tuple[int, int]:
        """Queue 16 kHz speech on the mic; returns its [start, end) mic sample positions."""
        start = self.mic.fed_samples + self.mic.pending_samples
        n = self.mic.load(clip)
        return start, start + n

    def daemon_config(self) -> Config:
        """The configuration the daemon was started with, as it parses it (defaults filled)."""
        return load_config(self.config_path)

    def device_period_samples(self) -> int:
        """One device period (PortAudio ``frames_per_buffer``, i.e. ``audio.block_ms``)."""
        return self.speaker.rate_hz * self.daemon_config().audio.block_ms // 1000

    def output_buffer_samples(self) -> int:
        """The ALSA playback buffer of the daemon's open stream, in device samples.

        PortAudio asks ALSA for a buffer of its suggested latency plus one period and
        reports the buffer minus that period as ``output_latency_s``. The rig's ``file``
        plugin holds exactly one buffer back (it writes to the FIFO only what exceeds it)
        and PortAudio primes the buffer with silence at stream start, so device sample
        ``k`` (the ``k``-th sample the daemon's callbacks produced) is recording sample
        ``k + output_buffer_samples()``. Checked in process with the duplex rig device:
        latency 10 ms, 160-sample periods; a marker produced at device sample ``k`` lands
        at recording sample ``k + 320`` (+1 for the resampler), and drained + FIFO bytes
        equal the samples produced. Valid while the stream was opened once
        (``engine.reopen_count == 0``).
        """
        latency_s = self.status().get("engine", {}).get("output_latency_s") or 0.0
        return round(latency_s * self.speaker.rate_hz) + self.device_period_samples()

    def mic_samples_fed_by(self, t: float) -> int:
        """An upper bound on the mic samples the rig had written by monotonic time ``t``.

        Blocks are logged right after their write, so the blocks logged by ``t`` were
        written by then; one more block may have been written before ``t`` and logged after
        it, so it is counted too. Nothing can have been captured that was not yet written:
        the daemon's capture position at ``t`` is at most this (the rig counts from its own
        start, so it is ahead of the daemon's count by what was read before the stream).
        """
        end = 0
        for block in self.mic.fed_blocks():
            if block.time > t:
                break
            end = block.start_sample + block.samples
        return end + self.mic.block_samples

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        return waiting.wait_until(predicate, timeout, poll_s=0.05)

    # ---------------------------------------------------------------- stop

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> tuple[int | None, float]:
        """SIGTERM the daemon; returns (exit code, seconds to exit)."""
        if self.proc is None:
            return None, 0.0
        t0 = time.monotonic()
        code: int | None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait(5)
        else:
            code = self.proc.returncode
        elapsed = time.monotonic() - t0
        if self.options.fake_clock_file is not None:
            remove_shared_memory(self.proc.pid)
        if self._reader is not None:
            self._reader.join(5)
        return code, elapsed

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        self.record = self.emulator.stop()
        self.rig.stop()
        if self.notify is not None:
            self.notify.close()

    def __enter__(self) -> Appliance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def nonsilent_runs(
    samples: np.ndarray, threshold: int = 200, gap: int = 2400
) -> list[tuple[int, int]]:
    """[start, end) runs of audio above `threshold`, merging gaps shorter than `gap`."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > threshold)
    if loud.size == 0:
        return []
    runs = []
    start = prev = int(loud[0])
    for i in loud[1:]:
        i = int(i)
        if i - prev > gap:
            runs.append((start, prev + 1))
            start = i
        prev = i
    runs.append((start, prev + 1))
    return runs

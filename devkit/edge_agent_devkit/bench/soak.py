"""Soak: hundreds of complete conversations in a row against the real daemon, with faults.

A leak that costs one file descriptor, a few kilobytes or one forgotten task per
conversation never shows in a test of one conversation; after months on a shelf it is
the whole story. This runs `edge-agent run` as a subprocess through the rig's
`Appliance` (real PyAudio over the ALSA FIFO rig, mock GPIO, the real SDK against the
emulator subprocess over TLS) and holds many conversations in a row:

- by voice: a button press, then a synthesized question on the real-time mic (the
  daemon's own VAD ends the turn; about 1.7 s each), or
- by text: `edge-agent say` over the control socket (about 0.3 s each: no mic wait).
  Both are answered by the emulator (unpaced, a short fixed reply) and the reply is
  played through the real-time speaker FIFO.

Faults are sprinkled in (every `fault_every`-th conversation, in rotation): 1011 and a
TCP drop in the middle of the reply, a goAway handover, a garbage frame, an unknown
message, a refused handle (every handle forgotten, then a drop: the resume gets 1007),
and a tool call (get_time, answered by the daemon and then spoken). The faults that cut
a reply always come with a voice conversation (see MID_REPLY_FAULTS).

Long life: the emulator sends goAway `go_away_after_s` into every connection, so the
session is handed over again and again (at least `min_handovers` times, or the soak
fails), and the context compression trigger is set to the config's minimum so the
emulator compresses the context every few turns.
`run_session_limit` checks the other side: compression off, the session limit shortened
to seconds; the session ends under the conversation and the next one is still answered.

A conversation completes when the daemon logs the expected reply ("gemini said: ...")
and then goes idle because the reply played out; anything else within the timeout is a
failure, with its reason. Resources are read from /proc/PID of the daemon (VmRSS, open
fds, threads) and from `status` (asyncio tasks) while it is idle, every `sample_every`
conversations. Flat means: from the sample at `warmup` conversations to the last, RSS
grows by at most `Bounds.rss_mb_per_100` MB per 100 conversations and fds, threads and
tasks by at most `Bounds.count_delta` in all (a leak of one per conversation shows as
dozens).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.app.control import control_request
from edge_agent_devkit.bench.report import PartReport, all_keys

log = logging.getLogger(__name__)

REPLY = "OK."
QUESTION = "what time is it"
TOOL_QUESTION = "get time please"  # the emulator calls get_time when the turn names it
TOOL_REPLY = "The get_time tool returned"
FAULTS = (
    "close_1011", "drop_tcp", "go_away", "bad_frame", "unknown_message",
    "refused_handle", "tool_call",
)  # fmt: skip
# Faults that cut a reply: the daemon asks the question again (a spoken turn from the
# session's replay log, a text turn from the machine) and the answer plays whole once.
MID_REPLY_FAULTS = frozenset({"close_1011", "drop_tcp", "refused_handle"})
CONVERSATION_TIMEOUT_S = 45.0
SAMPLE_READS = 3
FAULT_TRIES = 3  # a cut fault can miss its reply (a handover came first): try again
# Each short turn stands for a longer one in the emulator's context count (about 8 s of
# audio): with the trigger at the config's minimum, a compression every few turns.
TURN_CONTEXT_TOKENS = 200
SOAK_KEYS = tuple(all_keys("soak"))


@dataclass(frozen=True)
class Bounds:
    """What "flat" allows between the warm-up sample and the last one."""

    rss_mb_per_100: float = 3.0
    count_delta: int = 2  # fds, threads, tasks: absolute growth over the whole window


@dataclass(frozen=True)
class SoakPlan:
    conversations: int = 500
    voice_every: int = 2  # every n-th conversation by voice, the others by text
    fault_every: int = 5
    sample_every: int = 100
    warmup: int = 100  # the first sample flatness is measured from
    # goAway this long into every connection. Under the client's MIN_HANDOVER_UPTIME_S
    # (10 s) each handover also waits out a backoff delay (at most reconnect_max_delay_s).
    go_away_after_s: float = 5.0
    go_away_time_left_s: float = 2.0
    reconnect_max_delay_s: float = 2.0
    min_handovers: int = 50  # long life: the daemon handed over at least this often
    bounds: Bounds = field(default_factory=Bounds)


@dataclass(frozen=True)
class Sample:
    conversation: int  # conversations completed when it was taken
    elapsed_s: float
    rss_mb: float
    fds: int
    threads: int
    tasks: int


@dataclass
class SoakResult:
    plan: SoakPlan
    completed: int = 0
    failures: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    faults_planned: dict[str, int] = field(default_factory=dict)
    faults_missed: list[str] = field(default_factory=list)  # cut faults that never fired
    emulator: dict[str, Any] = field(default_factory=dict)
    handovers: int = 0
    reconnects: int = 0
    wall_s: float = 0.0

    def growth_per_100(self, what: str) -> float | None:
        """(last - warm-up sample) per 100 conversations."""
        base, last = self._window()
        if base is None or last is None or last.conversation <= base.conversation:
            return None
        delta = float(getattr(last, what)) - float(getattr(base, what))
        return 100.0 * delta / (last.conversation - base.conversation)

    def problems(self) -> list[str]:
        """Why the soak failed; empty when every conversation completed and all is flat."""
        out = [f"{len(self.failures)} conversation(s) failed"] if self.failures else []
        if self.handovers < self.plan.min_handovers:
            out.append(f"only {self.handovers} handovers (wanted {self.plan.min_handovers})")
        base, last = self._window()
        if base is None or last is None or last.conversation <= base.conversation:
            return [*out, "too few samples to judge growth"]
        bounds = self.plan.bounds
        rss = self.growth_per_100("rss_mb")
        if rss is not None and rss > bounds.rss_mb_per_100:
            out.append(f"RSS grew {rss:.2f} MB per 100 (bound {bounds.rss_mb_per_100})")
        for what in ("fds", "threads", "tasks"):
            delta = getattr(last, what) - getattr(base, what)
            if delta > bounds.count_delta:
                out.append(f"{what} grew by {delta} (bound {bounds.count_delta})")
        return out

    def _window(self) -> tuple[Sample | None, Sample | None]:
        later = [s for s in self.samples if s.conversation >= self.plan.warmup]
        return (later[0], later[-1]) if later else (None, None)

    def table(self) -> str:
        """One row per sample, then the growth per 100 and the verdict."""
        rows = ["conversations  elapsed_s  rss_mb   fds  threads  tasks"]
        for s in self.samples:
            rows.append(
                f"{s.conversation:>13}  {s.elapsed_s:>9.0f}  {s.rss_mb:>6.1f}  {s.fds:>4}"
                f"  {s.threads:>7}  {s.tasks:>5}"
            )
        growth = {k: self.growth_per_100(k) for k in ("rss_mb", "fds", "threads", "tasks")}
        rows.append(
            f"growth per 100 from conversation {self.plan.warmup}: "
            + ", ".join(f"{k} {'-' if v is None else f'{v:+.2f}'}" for k, v in growth.items())
        )
        rows.append(
            f"completed {self.completed}/{self.plan.conversations}, failures "
            f"{len(self.failures)}, handovers {self.handovers}, reconnects {self.reconnects}, "
            f"faults planned {self.faults_planned}, missed {self.faults_missed}, "
            f"emulator {json.dumps(self.emulator)}, wall {self.wall_s:.0f} s"
        )
        problems = self.problems()
        rows.append("PASS" if not problems else "FAIL: " + "; ".join(problems))
        rows.extend(f"  {f}" for f in self.failures[:20])
        return "\n".join(rows)


def read_resources(pid: int) -> tuple[float, int, int]:
    """(VmRSS in MB, open fds, threads) of a live process."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    rss_mb = int(fields["VmRSS"].split()[0]) / 1024
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    return rss_mb, fds, int(fields["Threads"])


def question_clip() -> np.ndarray:
    from edge_agent_devkit.rig import speech

    asked = speech.trim(speech.synthesize(QUESTION, voice="en-us"))
    return speech.concat(asked, speech.silence(0.6))


def appliance_options(plan: SoakPlan, *, compression: bool = True, limit_s: float = 0.0) -> Any:
    """The shipped config with the soak's overrides (each one says why in config.toml)."""
    from edge_agent_devkit.rig.appliance import ApplianceOptions

    emulator_args = [
        "--pace", "0", "--no-espeak", "--reply-text", REPLY, "--tool", "get_time",
        "--go-away-after", str(plan.go_away_after_s),
        "--go-away-time-left", str(plan.go_away_time_left_s),
        "--session-limit", str(limit_s), "--turn-context-tokens", str(TURN_CONTEXT_TOKENS),
    ]  # fmt: skip
    gemini: dict[str, Any] = {"context_window_compression": compression}
    if compression:  # the config's minimum: with TURN_CONTEXT_TOKENS, one every few turns
        gemini |= {"compression_trigger_tokens": 1000, "compression_target_tokens": 500}
    return ApplianceOptions(
        emulator_args=emulator_args,
        config={
            "gemini": gemini,
            "conversation": {"follow_up_s": 0.0},  # straight back to idle: next conversation
            "vad": {"speech_end_ms": 300},  # a shorter end of turn: more conversations a minute
            "reconnect": {"max_delay_s": plan.reconnect_max_delay_s},
        },
        watchdog_usec=None,
    )


class SoakDriver:
    """Drives one running Appliance through `plan.conversations` conversations."""

    def __init__(self, app: Any, plan: SoakPlan, timeout_s: float = CONVERSATION_TIMEOUT_S) -> None:
        self.app = app
        self.plan = plan
        self.timeout_s = timeout_s
        self.result = SoakResult(plan)
        self.clip = question_clip()
        self._t0 = time.monotonic()
        self._fault_turn = 0

    def run(self) -> SoakResult:
        self.sample(0)
        pending: str | None = None  # a cut fault that has not fired yet
        tries = 0
        for i in range(1, self.plan.conversations + 1):
            fault = pending
            if fault is None and i % self.plan.fault_every == 0:
                fault = FAULTS[self._fault_turn % len(FAULTS)]
                self._fault_turn += 1
                self.result.faults_planned[fault] = self.result.faults_planned.get(fault, 0) + 1
                tries = 0
            fired_before = self.fired(fault) if fault in MID_REPLY_FAULTS else 0
            by_voice = i % self.plan.voice_every == 0 and fault != "tool_call"
            error = self.conversation(fault, by_voice)
            if error is None:
                self.result.completed += 1
            else:
                how = "voice" if by_voice else "text"
                self.result.failures.append(f"#{i} ({how}, fault {fault}): {error}")
                log.warning("soak conversation %d failed: %s", i, error)
                if self.app.proc is None or self.app.proc.poll() is not None:
                    self.result.failures.append("the daemon exited")
                    break
            pending = None
            if fault in MID_REPLY_FAULTS and self.fired(fault) == fired_before:
                tries += 1
                if tries < FAULT_TRIES:
                    pending = fault  # it missed the reply: the next conversation gets it
                else:
                    self.result.faults_missed.append(f"#{i}: {fault}")
            if i % self.plan.sample_every == 0:
                self.sample(i)
        status = self.app.status().get("session") or {}
        self.result.handovers = int(status.get("handovers") or 0)
        self.result.reconnects = int(status.get("reconnects") or 0)
        self.result.emulator = emulator_stats(self.app)
        self.result.wall_s = time.monotonic() - self._t0
        return self.result

    def fired(self, fault: str | None) -> int:
        """How often the emulator has fired the fault behind `fault` so far."""
        kind = "drop_tcp" if fault == "refused_handle" else fault
        return int(emulator_stats(self.app)["faults"].get(kind, 0))

    def sample(self, conversation: int) -> None:
        """Resources while idle with the session up. Counts are the least of a few reads
        0.1 s apart: the socket of a connection still closing after a handover is not a
        leak; a leaked one stays in every read."""
        assert self.app.proc is not None
        if conversation > 0:  # before the first one there is no session yet
            self.app.wait_until(self.session_ready, 20)
        reads = []
        for n in range(SAMPLE_READS):
            if n:
                time.sleep(0.1)
            rss_mb, fds, threads = read_resources(self.app.proc.pid)
            reads.append((rss_mb, fds, threads, int(self.app.status().get("tasks"))))
        fds, threads, tasks = (min(r[k] for r in reads) for k in (1, 2, 3))
        elapsed = time.monotonic() - self._t0
        sample = Sample(conversation, elapsed, reads[-1][0], int(fds), int(threads), int(tasks))
        self.result.samples.append(sample)
        log.info("soak: %s", self.result.samples[-1])

    def conversation(self, fault: str | None, by_voice: bool) -> str | None:
        """One conversation; None when it completed, else why not."""
        app = self.app
        t0 = time.monotonic()
        if fault is not None and fault != "tool_call":
            self.inject(fault)
        expected = TOOL_REPLY if fault == "tool_call" else REPLY
        if by_voice:
            app.press()
            if app.wait_state("listening", 10, t0) is None:
                return "never listening after the button press"
            app.say(self.clip)
        else:
            text = TOOL_QUESTION if fault == "tool_call" else QUESTION
            answer = control_request(app.state_dir / "control.sock", {"cmd": "say", "text": text})
            if not answer.get("ok"):
                return f"say refused: {answer}"
        said = app.wait_log(rf"gemini said: {re.escape(expected)}", self.timeout_s, t0)
        if said is None:
            return f"no 'gemini said: {expected}' within {self.timeout_s:.0f} s"
        if app.wait_log(r"-> idle: reply played", self.timeout_s, said.t) is None:
            return "the reply never played out to idle"
        return None

    def session_ready(self) -> bool:
        return bool((self.app.status().get("session") or {}).get("ready"))

    def inject(self, fault: str) -> None:
        """Apply one fault to the open connection (waits until the session is ready)."""
        app = self.app
        app.wait_until(self.session_ready, 20)
        command = {
            "close_1011": "fault close_1011:mid_reply=true",
            "drop_tcp": "fault drop_tcp:mid_reply=true",
            "go_away": "fault go_away:time_left_s=1",
            "bad_frame": "fault bad_frame",
            "unknown_message": "fault unknown_message",
            "refused_handle": "fault drop_tcp:mid_reply=true",
        }[fault]
        if fault == "refused_handle":
            app.emulator.command("forget-handles")
        app.emulator.command(command)


def emulator_stats(app: Any) -> dict[str, Any]:
    line = app.emulator.command("stats")
    return json.loads(line.split("control: stats ", 1)[1])


def run_soak(workdir: Path, plan: SoakPlan) -> SoakResult:
    """Start the appliance, hold the conversations, stop it; never leaves it running."""
    from edge_agent_devkit.rig.appliance import Appliance

    with Appliance(workdir, appliance_options(plan)) as app:
        app.start()
        result = SoakDriver(app, plan).run()
        code, _ = app.stop()
        if code != 0:
            result.failures.append(f"the daemon exited with {code} on SIGTERM")
    return result


@dataclass
class LimitResult:
    conversations: int
    failures: list[str]
    sessions_ended: int
    stats: dict[str, Any]


def run_session_limit(
    workdir: Path, *, limit_s: float = 4.0, duration_s: float = 14.0
) -> LimitResult:
    """Compression off, the audio session limit shortened to `limit_s`: text conversations
    for `duration_s`; the session ends under them and every one is still answered."""
    from edge_agent_devkit.rig.appliance import Appliance

    plan = SoakPlan(go_away_after_s=3600.0, min_handovers=0)
    failures: list[str] = []
    count = 0
    with Appliance(workdir, appliance_options(plan, compression=False, limit_s=limit_s)) as app:
        app.start()
        soak = SoakDriver(app, plan)
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            count += 1
            error = soak.conversation(None, by_voice=False)
            if error is not None:
                failures.append(f"#{count}: {error}")
        stats = emulator_stats(app)
        if app.stop()[0] != 0:
            failures.append("the daemon did not exit cleanly on SIGTERM")
    return LimitResult(count, failures, int(stats.get("sessions_ended", 0)), stats)


def run(quick: bool = False) -> dict[str, Any]:
    """The bench part: the full soak (quick: 60 conversations), then the session limit."""
    report = PartReport(keys=SOAK_KEYS)
    quick_plan = SoakPlan(conversations=60, sample_every=10, warmup=20, min_handovers=5)
    plan = quick_plan if quick else SoakPlan()
    with tempfile.TemporaryDirectory(prefix="edge-agent-soak-") as tmp:
        holder: dict[str, SoakResult] = {}
        report.guard(SOAK_KEYS, lambda: holder.setdefault("r", run_soak(Path(tmp) / "s", plan)))
        result = holder.get("r")
        if result is not None:
            _report_soak(report, result)
        limit: dict[str, LimitResult] = {}
        report.guard(
            ("soak_session_limit_ends",),
            lambda: limit.setdefault("r", run_session_limit(Path(tmp) / "limit")),
        )
        if "r" in limit:
            lr = limit["r"]
            report.put(
                "soak_session_limit_ends",
                lr.sessions_ended,
                f"compression off, session limit 4 s, {lr.conversations} text conversations "
                f"in 14 s, failures {len(lr.failures)} {lr.failures[:3]}; emulator {lr.stats}",
            )
            if lr.failures or lr.sessions_ended < 1:
                report.put("soak_passed", False)
                report.note("soak_passed", f"session limit: {lr.failures[:3]}")
    return report.finish()


def _report_soak(report: PartReport, result: SoakResult) -> None:
    print(result.table())
    how = (
        f"{result.plan.conversations} conversations against the daemon (1 in "
        f"{result.plan.voice_every} by voice, the others by `say`), a fault every "
        f"{result.plan.fault_every}; {result.wall_s:.0f} s"
    )
    report.put("soak_conversations", result.completed, how)
    report.put("soak_failures", len(result.failures), "; ".join(result.failures[:5]) or None)
    window = f"from the sample at {result.plan.warmup} conversations to the last"
    for key, what in (
        ("soak_rss_growth_mb_per_100", "rss_mb"),
        ("soak_fd_growth_per_100", "fds"),
        ("soak_thread_growth_per_100", "threads"),
        ("soak_task_growth_per_100", "tasks"),
    ):
        report.put(key, result.growth_per_100(what), f"{window}; samples: {_series(result, what)}")
    report.put(
        "soak_handovers",
        result.handovers,
        f"goAway every {result.plan.go_away_after_s:g} s into each connection; handovers the "
        "daemon made with a conversation under way (a goAway while idle just closes the "
        f"connection); emulator counters: {json.dumps(result.emulator)}",
    )
    report.put("soak_compressions", result.emulator.get("compressions"))
    problems = result.problems()
    report.put("soak_passed", not problems, "; ".join(problems) or "every conversation, flat")


def _series(result: SoakResult, what: str) -> str:
    return " ".join(f"{s.conversation}:{getattr(s, what):g}" for s in result.samples)

"""Run the benchmark parts, merge them into one JSON object, print a table.

The key set is fixed: every key below is in `results.json` with a
number (a flag key: true or false) or null, each followed by its `baseline_*` sibling
where it has one; then "errors" (key -> why it is null), "notes" (key -> how it was
measured) and "meta". A part that is missing, crashes or leaves a key out does not crash
the run: its keys become null with an error, so a broken measurement is visible rather
than silently absent. A part too slow for every run (arm64: a smoke under QEMU) runs
only when named with --only; otherwise its keys are null with an error that says how to
run it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PARTS = ("audio", "system", "arm64", "soak")
# Parts that run only when named with --only, and how to ask for them.
ON_REQUEST = {
    "arm64": "run scripts/bench --only arm64 (slow: an arm64 root under QEMU)",
    "soak": "run scripts/bench --only soak (slow: 500 conversations, about 15 minutes)",
}
DEFAULT_PARTS = tuple(p for p in PARTS if p not in ON_REQUEST)


@dataclass(frozen=True)
class KeySpec:
    """One reported figure: its unit, the part that measures it and its baseline key."""

    name: str
    unit: str
    part: str
    baseline: str | None = None
    baseline_unit: str | None = None  # when it differs from `unit` (no ratio then)
    is_ratio: bool = False  # the figure is already "ours / baseline"
    is_flag: bool = False  # true/false (passed or not), not a number


KEYS: tuple[KeySpec, ...] = (
    # audio (engineer A): in-process, real libraries
    KeySpec("idle_cpu_ratio_vs_bare_openwakeword", "x", "audio", is_ratio=True),
    KeySpec("idle_cpu_percent_of_core", "% core", "audio"),
    KeySpec("idle_cpu_ratio_vs_lean_wake_model", "x", "audio", is_ratio=True),
    KeySpec("wake_detection_delay_ms", "ms", "audio"),
    KeySpec("echo_erle_db", "dB", "audio"),
    KeySpec("echo_self_triggers", "count", "audio", "baseline_echo_self_triggers_aec_off"),
    KeySpec("voice_barge_in_ms", "ms", "audio"),
    KeySpec(
        "underruns_per_minute", "/min", "audio", "baseline_underruns_per_minute_no_jitter_buffer"
    ),
    # system (engineer B): the daemon, the emulator, the Live session layer
    KeySpec("wake_to_uplink_lost_ms", "ms", "system"),
    KeySpec(
        "uplink_bytes_ratio_vs_always_stream",
        "x",
        "system",
        "baseline_always_stream_bytes",
        baseline_unit="bytes",
        is_ratio=True,
    ),
    KeySpec(
        "first_audio_latency_ms",
        "ms",
        "system",
        "baseline_first_audio_latency_ms_no_jitter_buffer",
    ),
    KeySpec("barge_in_ms", "ms", "system"),
    KeySpec("handover_lost_audio_ms", "ms", "system"),
    KeySpec("drop_lost_audio_ms", "ms", "system"),
    KeySpec("reconnect_ready_ms", "ms", "system", "baseline_reconnect_ready_ms_fixed_3s"),
    KeySpec("peak_rss_mb", "MB", "system"),
    KeySpec("startup_ready_s", "s", "system"),
    # arm64: scripts/check-arm64, true only when every step of its smoke passed
    KeySpec("arm64_smoke", "pass", "arm64", is_flag=True),
    # soak: hundreds of conversations in a row against the daemon, with faults (soak.py)
    KeySpec("soak_conversations", "count", "soak"),
    KeySpec("soak_failures", "count", "soak"),
    KeySpec("soak_rss_growth_mb_per_100", "MB", "soak"),
    KeySpec("soak_fd_growth_per_100", "count", "soak"),
    KeySpec("soak_thread_growth_per_100", "count", "soak"),
    KeySpec("soak_task_growth_per_100", "count", "soak"),
    KeySpec("soak_handovers", "count", "soak"),
    KeySpec("soak_compressions", "count", "soak"),
    KeySpec("soak_session_limit_ends", "count", "soak"),
    KeySpec("soak_passed", "pass", "soak", is_flag=True),
)
FLAG_KEYS = frozenset(k.name for k in KEYS if k.is_flag)


def result_keys(part: str | None = None) -> list[str]:
    return [k.name for k in KEYS if part is None or k.part == part]


def baseline_keys(part: str | None = None) -> list[str]:
    return [k.baseline for k in KEYS if k.baseline and (part is None or k.part == part)]


def all_keys(part: str | None = None) -> list[str]:
    """Every figure in results.json, each followed by its baseline (the file's order)."""
    out: list[str] = []
    for k in KEYS:
        if part is None or k.part == part:
            out.append(k.name)
            if k.baseline:
                out.append(k.baseline)
    return out


@dataclass
class PartReport:
    """What a part's `run()` returns, filled step by step (a key is a number or None;
    a flag key is True, False or None)."""

    keys: Sequence[str]
    results: dict[str, float | bool | None] = field(default_factory=dict)
    baselines: dict[str, float | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def put(self, key: str, value: float | bool | None, note: str | None = None) -> None:
        if key not in self.keys:
            raise KeyError(f"{key!r} is not one of this part's keys")
        target: dict[str, Any] = self.baselines if key.startswith("baseline_") else self.results
        if key in FLAG_KEYS:
            if value is not None and not isinstance(value, bool):
                raise TypeError(f"{key} is a flag: True, False or None, not {value!r}")
            target[key] = value
        elif isinstance(value, bool):
            raise TypeError(f"{key} is a number, not a flag ({value!r})")
        elif value is not None and not math.isfinite(float(value)):
            target[key] = None
            self.errors[key] = f"measurement gave a non-finite value ({value})"
        else:
            target[key] = None if value is None else float(value)
        if note:
            self.notes[key] = note

    def note(self, key: str, text: str) -> None:
        self.notes[key] = f"{self.notes[key]} {text}" if key in self.notes else text

    def fail(self, keys: Iterable[str], why: str) -> None:
        """Record an error for every key in `keys` that has no number yet."""
        for key in keys:
            if self.value(key) is None:
                self.put(key, None)
                self.errors.setdefault(key, why)

    def value(self, key: str) -> float | bool | None:
        return (self.baselines if key.startswith("baseline_") else self.results).get(key)

    def guard(self, keys: Sequence[str], step: Callable[[], None]) -> None:
        """Run one measurement; an exception becomes an error for the keys it owes."""
        try:
            step()
        except Exception as exc:
            logger.warning("bench step for %s failed: %s", ", ".join(keys), exc)
            logger.debug("%s", traceback.format_exc())
            self.fail(keys, f"{type(exc).__name__}: {exc}")

    def finish(self) -> dict[str, Any]:
        self.fail(self.keys, "not measured (an earlier step failed)")
        return {
            "results": dict(self.results),
            "baselines": dict(self.baselines),
            "errors": dict(self.errors),
            "notes": dict(self.notes),
        }


# --------------------------------------------------------------------------- running parts


def _load_part(name: str) -> Callable[..., dict[str, Any]]:
    """Import `edge_agent_devkit.bench.<name>` lazily (a part may be missing or broken)."""
    module = importlib.import_module(f"edge_agent_devkit.bench.{name}")
    run = getattr(module, "run", None)
    if not callable(run):
        raise AttributeError(f"edge_agent_devkit.bench.{name} has no run()")
    return run


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _value(key: str, raw: Any) -> float | bool | None:
    """A key's value as results.json holds it: a flag key's bool, else a finite number."""
    if key in FLAG_KEYS:
        return raw if isinstance(raw, bool) else None
    return _number(raw)


def run_part(name: str, quick: bool) -> tuple[dict[str, Any], float]:
    """Run one part and normalise its output to exactly its keys; never raises."""
    keys = all_keys(name)
    t0 = time.monotonic()
    values: dict[str, float | None] = {}
    errors: dict[str, str] = {}
    notes: dict[str, str] = {}
    try:
        run = _load_part(name)
    except Exception as exc:
        why = f"{name} part unavailable: {type(exc).__name__}: {exc}"
        logger.warning("%s", why)
        return {"values": dict.fromkeys(keys), "errors": dict.fromkeys(keys, why), "notes": {}}, (
            time.monotonic() - t0
        )
    try:
        out = run(quick=quick)
        if not isinstance(out, dict):
            raise TypeError(f"run() returned {type(out).__name__}, not a dict")
    except Exception as exc:
        why = f"{name} part crashed: {type(exc).__name__}: {exc}"
        logger.error("%s\n%s", why, traceback.format_exc())
        return {"values": dict.fromkeys(keys), "errors": dict.fromkeys(keys, why), "notes": {}}, (
            time.monotonic() - t0
        )
    reported = {**(out.get("results") or {}), **(out.get("baselines") or {})}
    part_errors = {str(k): str(v) for k, v in (out.get("errors") or {}).items()}
    notes = {str(k): str(v) for k, v in (out.get("notes") or {}).items()}
    for key in keys:
        raw = reported.get(key)
        value = _value(key, raw)
        values[key] = value
        if key in part_errors:
            errors[key] = part_errors[key]
            if value is not None:  # a number with an error: keep both, the error explains
                logger.warning("%s: %s has a value and an error: %s", name, key, errors[key])
        elif value is None:
            errors[key] = (
                f"{name} part did not report it"
                if key not in reported
                else f"{name} part reported a non-{'flag' if key in FLAG_KEYS else 'number'}: "
                f"{raw!r}"
            )
    extra = sorted(set(reported) - set(keys))
    if extra:
        notes["_extra_keys"] = f"{name} part reported unknown keys (ignored): {', '.join(extra)}"
    return {"values": values, "errors": errors, "notes": notes}, time.monotonic() - t0


def _git_commit(root: Path) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def repo_root() -> Path:
    """The checkout this package lives in (editable install), else the working directory."""
    here = Path(__file__).resolve().parents[3]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


def merge(
    parts: dict[str, dict[str, Any]],
    *,
    selected: Sequence[str],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """One object: every key (number or null) in the fixed order, then errors/notes/meta."""
    doc: dict[str, Any] = {}
    errors: dict[str, str] = {}
    notes: dict[str, str] = {}
    for spec in KEYS:
        for key in (spec.name, spec.baseline):
            if key is None:
                continue
            part = parts.get(spec.part)
            if part is None:
                doc[key] = None
                if spec.part in selected:
                    errors[key] = f"{spec.part} part did not run"
                elif spec.part in ON_REQUEST:
                    errors[key] = f"not run: {ON_REQUEST[spec.part]}"
                else:
                    errors[key] = f"not run (--only {', '.join(selected)})"
                continue
            doc[key] = part["values"].get(key)
            if key in part["errors"]:
                errors[key] = part["errors"][key]
            if key in part["notes"]:
                notes[key] = part["notes"][key]
    for name, part in parts.items():
        for key, text in part["notes"].items():
            if key not in doc:
                notes[f"{name}.{key.lstrip('_')}" if key.startswith("_") else key] = text
    doc["errors"] = errors
    doc["notes"] = notes
    doc["meta"] = meta
    return doc


def _previous(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def carry_over(
    doc: dict[str, Any], previous: dict[str, Any] | None, selected: Sequence[str]
) -> None:
    """Keep the figures of parts this run did not run from the file it replaces.

    `--only soak` must not wipe the audio and system figures measured earlier: each key of
    a part not run keeps its previous value, error and note; meta says which were kept.
    """
    if not previous:
        return
    kept: list[str] = []
    old_errors = previous.get("errors") or {}
    old_notes = previous.get("notes") or {}
    for part in PARTS:
        if part in selected:
            continue
        for key in all_keys(part):
            if key not in previous:
                continue
            doc[key] = _value(key, previous[key])
            doc["errors"].pop(key, None)
            if key in old_errors:
                doc["errors"][key] = old_errors[key]
            if key in old_notes:
                doc["notes"][key] = old_notes[key]
            kept.append(key)
    if kept:
        old_meta = previous.get("meta") or {}
        doc["meta"]["carried_over"] = {
            "keys": kept,
            "from_date": old_meta.get("date"),
            "from_commit": old_meta.get("git_commit"),
        }


def missing_keys(doc: dict[str, Any], parts: Iterable[str]) -> list[str]:
    """Keys of the given parts that have no number (a flag key: no true or false)."""
    return [k for p in parts for k in all_keys(p) if _value(k, doc.get(k)) is None]


def failed_flags(doc: dict[str, Any], parts: Iterable[str]) -> list[str]:
    """Flag keys of the given parts that are false: measured, and the check failed."""
    return [k for p in parts for k in all_keys(p) if k in FLAG_KEYS and doc.get(k) is False]


# --------------------------------------------------------------------------- table


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit in ("count", "bytes") and float(value).is_integer():
        return f"{int(value):d}"
    a = abs(value)
    if a == 0:
        return "0"
    if a >= 100:
        return f"{value:.0f}"
    if a >= 10:
        return f"{value:.1f}"
    if a >= 0.01:
        return f"{value:.3g}"
    return f"{value:.2e}"


def table(doc: dict[str, Any]) -> str:
    """key | value | unit | baseline | ratio; errors listed under the table."""
    rows = [("key", "value", "unit", "baseline", "ratio")]
    errs = doc.get("errors") or {}
    for spec in KEYS:
        if spec.is_flag:
            flag = doc.get(spec.name)
            cell = "true" if flag is True else "false" if flag is False else "ERROR"
            if flag is None and str(errs.get(spec.name, "")).startswith("not run"):
                cell = "not run"
            rows.append((spec.name, cell, spec.unit, "-", "-"))
            continue
        value = _number(doc.get(spec.name))
        base = _number(doc.get(spec.baseline)) if spec.baseline else None
        base_unit = spec.baseline_unit or spec.unit
        if spec.is_ratio:
            ratio = _fmt(value) if value is not None else "-"
        elif value is not None and base not in (None, 0.0) and spec.baseline_unit is None:
            ratio = _fmt(value / base)  # type: ignore[operator]
        else:
            ratio = "-"
        base_text = "-" if spec.baseline is None else f"{_fmt(base, base_unit)}"
        if spec.baseline is not None and spec.baseline_unit:
            base_text += f" {spec.baseline_unit}"
        rows.append(
            (
                spec.name,
                _fmt(value, spec.unit) if value is not None else "ERROR",
                spec.unit,
                base_text,
                ratio,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for n, r in enumerate(rows):
        lines.append(
            "  ".join(
                cell.ljust(widths[i]) if i in (0, 2) else cell.rjust(widths[i])
                for i, cell in enumerate(r)
            ).rstrip()
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    if errs:
        lines.append("")
        lines.append("errors:")
        lines.extend(f"  {k}: {v}" for k, v in errs.items())
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m edge_agent_devkit.bench",
        description="Measure edge-agent on its real code paths; print a table, write JSON.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short smoke run (figures are rough, not results)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON output path (default: bench/results.json in the repository)",
    )
    parser.add_argument(
        "--only",
        choices=PARTS,
        action="append",
        help="run only this part (repeatable); "
        + "; ".join(f"{p} runs only when named" for p in ON_REQUEST),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def _setup_logging(verbose: bool) -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    level = logging.DEBUG if verbose else logging.INFO
    logging.getLogger("edge_agent_devkit.bench").setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected parts; write JSON; print the table. 0 iff every figure is a number
    and every flag is true."""
    args = parse_args(argv)
    _setup_logging(args.verbose)
    selected = tuple(p for p in PARTS if p in args.only) if args.only else DEFAULT_PARTS
    root = repo_root()
    out_path: Path = args.out if args.out is not None else root / "bench" / "results.json"
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    parts: dict[str, dict[str, Any]] = {}
    durations: dict[str, float] = {}
    for name in selected:
        logger.info("bench: running the %s part%s", name, " (quick)" if args.quick else "")
        parts[name], durations[name] = run_part(name, args.quick)
        logger.info("bench: %s part done in %.1f s", name, durations[name])
    meta = {
        "date": started.isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "git_commit": _git_commit(root),
        "quick": bool(args.quick),
        "parts": list(selected),
        "durations_s": {k: round(v, 2) for k, v in durations.items()},
        "total_s": round(time.monotonic() - t0, 2),
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
    }
    doc = merge(parts, selected=selected, meta=meta)
    carry_over(doc, _previous(out_path), selected)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, out_path)
    print(table(doc))
    missing = missing_keys(doc, selected)
    failed = failed_flags(doc, selected)
    print(
        f"\nwrote {out_path} ({meta['total_s']:.0f} s; "
        + (f"{len(missing)} figure(s) missing)" if missing else "every figure measured)")
    )
    if failed:
        print(f"failed: {', '.join(failed)} (see notes in {out_path.name})")
    return 1 if missing or failed else 0

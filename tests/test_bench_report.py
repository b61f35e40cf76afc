"""The benchmark report: every issue-6 and issue-15 key is present, and a failed
measurement is an error.

No timing here (rule 5): this checks the bookkeeping that turns measurements into
`bench/results.json`, so a broken part can never pass off as a number.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from edge_agent_devkit.bench import arm64, report
from edge_agent_devkit.bench.report import PartReport

ISSUE_6_KEYS = {
    "idle_cpu_ratio_vs_bare_openwakeword",
    "idle_cpu_percent_of_core",
    "wake_detection_delay_ms",
    "wake_to_uplink_lost_ms",
    "uplink_bytes_ratio_vs_always_stream",
    "first_audio_latency_ms",
    "underruns_per_minute",
    "barge_in_ms",
    "voice_barge_in_ms",
    "echo_erle_db",
    "echo_self_triggers",
    "handover_lost_audio_ms",
    "drop_lost_audio_ms",
    "reconnect_ready_ms",
    "peak_rss_mb",
    "startup_ready_s",
}


ISSUE_15_KEYS = {"arm64_smoke", "idle_cpu_ratio_vs_lean_wake_model"}
ISSUE_15_FLAGS = {"arm64_smoke"}
ISSUE_17_KEYS = {  # the soak (bench/soak.py)
    "soak_conversations",
    "soak_failures",
    "soak_rss_growth_mb_per_100",
    "soak_fd_growth_per_100",
    "soak_thread_growth_per_100",
    "soak_task_growth_per_100",
    "soak_handovers",
    "soak_compressions",
    "soak_session_limit_ends",
    "soak_passed",
}
ISSUE_17_FLAGS = {"soak_passed"}


def test_key_table_is_exactly_the_issue_6_and_15_keys_with_the_named_baselines() -> None:
    assert set(report.result_keys()) == ISSUE_6_KEYS | ISSUE_15_KEYS | ISSUE_17_KEYS
    assert report.FLAG_KEYS == ISSUE_15_FLAGS | ISSUE_17_FLAGS
    assert set(report.baseline_keys()) == {
        "baseline_echo_self_triggers_aec_off",
        "baseline_underruns_per_minute_no_jitter_buffer",
        "baseline_always_stream_bytes",
        "baseline_first_audio_latency_ms_no_jitter_buffer",
        "baseline_reconnect_ready_ms_fixed_3s",
    }
    ordered = report.all_keys()
    assert ordered.index("baseline_reconnect_ready_ms_fixed_3s") == (
        ordered.index("reconnect_ready_ms") + 1
    )


def test_part_report_turns_bad_values_and_exceptions_into_errors() -> None:
    part = PartReport(keys=report.all_keys("system"))
    part.put("barge_in_ms", 45.0)
    part.put("peak_rss_mb", math.nan)
    with pytest.raises(KeyError):
        part.put("echo_erle_db", 1.0)  # an audio key: not this part's

    def broken() -> None:
        raise RuntimeError("emulator did not start")

    part.guard(("startup_ready_s", "barge_in_ms"), broken)
    out = part.finish()

    assert out["results"]["barge_in_ms"] == 45.0
    assert "barge_in_ms" not in out["errors"]  # measured before the failure: kept
    assert out["results"]["peak_rss_mb"] is None
    assert "non-finite" in out["errors"]["peak_rss_mb"]
    assert out["errors"]["startup_ready_s"] == "RuntimeError: emulator did not start"
    assert out["baselines"]["baseline_reconnect_ready_ms_fixed_3s"] is None
    assert "not measured" in out["errors"]["baseline_reconnect_ready_ms_fixed_3s"]


def test_run_part_normalises_a_partial_a_crashing_and_a_missing_part(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def partial(quick: bool) -> dict[str, Any]:
        return {
            "results": {"echo_erle_db": 58.8, "voice_barge_in_ms": "fast", "bogus": 1.0},
            "baselines": {},
            "errors": {},
        }

    def crashing(quick: bool) -> dict[str, Any]:
        raise OSError("no ALSA")

    runs = {"audio": partial, "system": crashing}

    def load(name: str) -> Any:
        if name not in runs:
            raise ImportError(f"no part {name}")
        return runs[name]

    monkeypatch.setattr(report, "_load_part", load)

    audio, _ = report.run_part("audio", quick=True)
    assert audio["values"]["echo_erle_db"] == 58.8
    assert audio["values"]["voice_barge_in_ms"] is None
    assert "non-number" in audio["errors"]["voice_barge_in_ms"]
    assert "did not report" in audio["errors"]["wake_detection_delay_ms"]
    assert "bogus" in audio["notes"]["_extra_keys"]

    system, _ = report.run_part("system", quick=True)
    assert set(system["values"]) == set(report.all_keys("system"))
    assert all(v is None for v in system["values"].values())
    assert all("crashed: OSError: no ALSA" in e for e in system["errors"].values())

    doc = report.merge({"audio": audio}, selected=("audio",), meta={})
    assert [k for k in doc if k not in ("errors", "notes", "meta")] == report.all_keys()
    assert doc["errors"]["startup_ready_s"] == "not run (--only audio)"
    assert report.missing_keys(doc, ["audio"]) == [
        k for k in report.all_keys("audio") if k != "echo_erle_db"
    ]
    json.dumps(doc, allow_nan=False)  # valid JSON: missing figures are null, never NaN

    text = report.table(doc)
    row = next(line for line in text.splitlines() if line.startswith("voice_barge_in_ms"))
    assert "ERROR" in row
    assert "58.8" in next(line for line in text.splitlines() if line.startswith("echo_erle_db"))


def test_main_exits_non_zero_and_writes_every_key_when_a_figure_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    def only_one(quick: bool) -> dict[str, Any]:
        return {"results": {"barge_in_ms": 45.0}}

    monkeypatch.setattr(report, "_load_part", lambda name: only_one)
    out = tmp_path / "results.json"
    assert report.main(["--only", "system", "--out", str(out)]) == 1
    doc = json.loads(out.read_text())
    assert set(report.all_keys()) <= set(doc)
    assert doc["barge_in_ms"] == 45.0
    assert doc["startup_ready_s"] is None and doc["errors"]["startup_ready_s"]
    assert "figure(s) missing" in capsys.readouterr().out


def _numbers_for(name: str) -> dict[str, Any]:
    """A part that measured every one of its keys."""
    keys = report.all_keys(name)
    return {
        "results": {k: 1.0 for k in keys if not k.startswith("baseline_")},
        "baselines": {k: 2.0 for k in keys if k.startswith("baseline_")},
    }


def test_default_run_skips_the_arm64_part_but_writes_its_key_saying_how_to_run_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    loaded: list[str] = []

    def load(name: str) -> Any:
        loaded.append(name)
        return lambda quick: _numbers_for(name)

    monkeypatch.setattr(report, "_load_part", load)
    out = tmp_path / "results.json"
    assert report.main(["--out", str(out)]) == 0  # every figure of the default parts
    assert loaded == ["audio", "system"]
    doc = json.loads(out.read_text())
    assert "arm64_smoke" in doc and doc["arm64_smoke"] is None
    assert "scripts/bench --only arm64" in doc["errors"]["arm64_smoke"]
    assert doc["meta"]["parts"] == ["audio", "system"]
    row = next(ln for ln in report.table(doc).splitlines() if ln.startswith("arm64_smoke"))
    assert "not run" in row


@pytest.mark.parametrize(
    ("smoke", "exit_code", "value", "error"),
    [
        (True, 0, True, None),
        (False, 1, False, None),  # measured, and a step failed: a result, and exit 1
        (1.0, 1, None, "non-flag"),  # a number is not a pass/fail
        ("yes", 1, None, "non-flag"),
    ],
)
def test_only_arm64_records_the_smoke_as_a_flag(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
    smoke: Any,
    exit_code: int,
    value: bool | None,
    error: str | None,
) -> None:
    monkeypatch.setattr(
        report, "_load_part", lambda name: lambda quick: {"results": {"arm64_smoke": smoke}}
    )
    out = tmp_path / "results.json"
    assert report.main(["--only", "arm64", "--out", str(out)]) == exit_code
    doc = json.loads(out.read_text())
    assert doc["arm64_smoke"] is value
    if error is None:
        assert "arm64_smoke" not in doc["errors"]
    else:
        assert error in doc["errors"]["arm64_smoke"]
    assert doc["errors"]["peak_rss_mb"] == "not run (--only arm64)"
    assert report.missing_keys(doc, ["arm64"]) == ([] if value is not None else ["arm64_smoke"])
    assert report.failed_flags(doc, ["arm64"]) == (["arm64_smoke"] if value is False else [])


def test_part_report_keeps_flags_and_numbers_apart() -> None:
    part = PartReport(keys=report.all_keys("arm64") + report.all_keys("system"))
    with pytest.raises(TypeError):
        part.put("arm64_smoke", 1.0)
    with pytest.raises(TypeError):
        part.put("barge_in_ms", True)
    part.put("arm64_smoke", False, "wake models failed")
    out = part.finish()
    assert out["results"]["arm64_smoke"] is False
    assert "arm64_smoke" not in out["errors"]
    assert out["notes"]["arm64_smoke"] == "wake models failed"


def _smoke_result(*failed: str) -> dict[str, Any]:
    names = ["install.sh", "check-config", "wake models", "detect hey jarvis", "Live turn"]
    steps = [
        {"name": n, "ok": n not in failed, "detail": "killed by SIGSEGV", "seconds": 3.0}
        for n in names
    ]
    return {
        "machine": {"arch": "aarch64", "os": "Debian GNU/Linux 12 (bookworm)"},
        "steps": steps,
        "versions": {"python": "3.11.2", "onnxruntime": None, "numpy": "1.26.4"},
        "workarounds": {"arm_cpuinfo": {"active": True, "needed": True, "detail": "segfault"}},
        "all_passed": not failed,
    }


def test_arm64_part_reads_check_arm64s_result() -> None:
    passed = PartReport(keys=arm64.ARM64_KEYS)
    arm64.report_from_result(_smoke_result(), passed)
    done = passed.finish()
    assert done["results"]["arm64_smoke"] is True
    assert "5 of 5 steps passed on aarch64" in done["notes"]["arm64_smoke"]
    assert done["notes"]["arm64_versions"] == "python 3.11.2, numpy 1.26.4"
    assert done["notes"]["arm64_workarounds"].startswith("--arm-cpuinfo on, still needed")

    failed = PartReport(keys=arm64.ARM64_KEYS)
    arm64.report_from_result(_smoke_result("wake models"), failed)
    done = failed.finish()
    assert done["results"]["arm64_smoke"] is False
    assert "failed: wake models (killed by SIGSEGV)" in done["notes"]["arm64_smoke"]
    assert "FAIL wake models" in done["notes"]["arm64_steps"]

    empty = PartReport(keys=arm64.ARM64_KEYS)
    arm64.report_from_result({"steps": []}, empty)
    done = empty.finish()
    assert done["results"]["arm64_smoke"] is None
    assert "no steps" in done["errors"]["arm64_smoke"]

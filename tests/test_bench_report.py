"""The benchmark report: every issue-6 key is present, and a failed measurement is an error.

No timing here (rule 5): this checks the bookkeeping that turns measurements into
`bench/results.json`, so a broken part can never pass off as a number.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from edge_agent_devkit.bench import report
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


def test_key_table_is_exactly_the_issue_6_keys_with_the_named_baselines() -> None:
    assert set(report.result_keys()) == ISSUE_6_KEYS
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

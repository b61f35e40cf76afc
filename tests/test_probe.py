"""`edge-agent probe` against the emulator: each failure gets its own step, verdict and code."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import trustme
from sim_fixtures import KEY, emulator, run

from edge_agent import cli
from edge_agent.config import GeminiConfig
from edge_agent.live.probe import ProbeExit, run_probe
from edge_agent_devkit.emulator import faults as fk
from edge_agent_devkit.emulator.faults import FaultSpec

STEPS = ["name resolution", "TLS", "authentication", "model accepted", "setupComplete"]


def config_for(emu, **values) -> GeminiConfig:
    return GeminiConfig(base_url=emu.base_url, ca_file=str(emu.ca_pem_path), **values)


def test_good_setup_passes_every_step_with_times() -> None:
    async def body() -> None:
        async with emulator() as emu:
            report = await run_probe(config_for(emu), KEY)
            assert report.exit is ProbeExit.OK, report.lines()
            assert [s.name for s in report.steps] == [*STEPS, "silent turn"]
            assert all(s.ok and s.seconds >= 0 for s in report.steps)
            assert report.verdict.startswith("OK: gemini-3.8-live answers")
            # the silent turn really reached the service as one bracketed audio turn
            turns = emu.record.sessions[0].turns
            assert len(turns) == 1 and turns[0].ended_by == "activityEnd"
            assert turns[0].audio_bytes == 16_000  # 0.5 s of 16 kHz s16le

    run(body)


def test_bad_key_is_an_authentication_failure_and_never_printed() -> None:
    async def body() -> None:
        async with emulator() as emu:
            secret = "wrong-key-0123456789"
            report = await run_probe(config_for(emu), secret)
            assert report.exit is ProbeExit.AUTH
            assert report.steps[-1].name == "authentication" and not report.steps[-1].ok
            assert "API key" in report.verdict
            assert secret not in "\n".join(report.lines())

    run(body)


def test_retired_model_names_the_model_step() -> None:
    async def body() -> None:
        async with emulator() as emu:
            emu.retire_model("gemini-3.8-live")
            report = await run_probe(config_for(emu), KEY)
            assert report.exit is ProbeExit.MODEL
            assert [(s.name, s.ok) for s in report.steps[-2:]] == [
                ("authentication", True),
                ("model accepted", False),
            ]
            assert "is not found for API version v1beta" in report.steps[-1].detail
            assert "gemini-3.8-live is retired" in report.verdict

    run(body)


def test_untrusted_ca_fails_at_tls(tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))

    async def body() -> None:
        async with emulator() as emu:
            cfg = GeminiConfig(base_url=emu.base_url, ca_file=str(other_ca))
            report = await run_probe(cfg, KEY)
            assert report.exit is ProbeExit.TLS
            assert [(s.name, s.ok) for s in report.steps] == [
                ("name resolution", True),
                ("TLS", False),
            ]
            assert "not trusted" in report.verdict
            assert emu.record.connections == []  # never got as far as a WebSocket

    run(body)


def test_setup_never_answered_is_a_setup_failure() -> None:
    async def body() -> None:
        faults = {0: [FaultSpec(fk.NEVER_SETUP)]}
        async with emulator(connection_faults=faults) as emu:
            report = await run_probe(config_for(emu, setup_timeout_s=1.0), KEY)
            assert report.exit is ProbeExit.SETUP
            assert (report.steps[-1].name, report.steps[-1].ok) == ("setupComplete", False)
            assert 0.9 <= report.steps[-1].seconds < 5.0

    run(body)


@pytest.mark.parametrize(
    "model", ["gemini-3.1-flash-live-preview", "gemini-2.5-flash-native-audio-latest"]
)
def test_legacy_families_pass_too(model: str) -> None:
    async def body() -> None:
        async with emulator() as emu:
            report = await run_probe(config_for(emu, model=model), KEY)
            assert report.exit is ProbeExit.OK, report.lines()
            assert emu.record.connections[0].model == model

    run(body)


def test_cli_probe_exit_code_and_output(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", KEY)

    async def body() -> tuple[int, int]:
        async with emulator() as emu:
            config = tmp_path / "config.toml"
            config.write_text(
                f'[gemini]\nbase_url = "{emu.base_url}"\nca_file = "{emu.ca_pem_path}"\n'
            )
            good = await asyncio.to_thread(cli.main, ["probe", "--config", str(config)])
            emu.retire_model("gemini-3.8-live")
            retired = await asyncio.to_thread(cli.main, ["probe", "--config", str(config)])
            return good, retired

    codes: list[tuple[int, int]] = []

    async def wrapper() -> None:
        codes.append(await body())

    run(wrapper)
    out = capsys.readouterr().out
    assert codes == [(0, 6)]
    assert "verdict: OK" in out and "(exit 6)" in out
    assert KEY not in out


def test_cli_probe_without_key_is_a_config_failure(tmp_path: Path, monkeypatch, capsys) -> None:
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "config.toml"
    config.write_text(f'[gemini]\napi_key_file = "{tmp_path / "none"}"\n')
    assert cli.main(["probe", "--config", str(config)]) == ProbeExit.CONFIG
    assert "no Gemini API key" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ['thinking_level = "low"', "affective_dialog = true"])
def test_cli_probe_refuses_an_invalid_config(tmp_path: Path, bad: str, capsys) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f"[gemini]\n{bad}\n")
    assert cli.main(["probe", "--config", str(config)]) == ProbeExit.CONFIG
    assert "not supported by gemini-3.8-live" in capsys.readouterr().err

"""The `edge-agent` command line against real devices (ALSA rig) and real files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from edge_agent_devkit.rig.alsa_rig import AlsaRig


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_devices_lists_alsa_names_without_portaudio_noise(tmp_path: Path) -> None:
    rig = AlsaRig(tmp_path)
    rig.add_fifo_capture("kitchen_mic", 16000)
    rig.add_fifo_playback("kitchen_speaker", 24000)
    with rig:
        result = run_cli("devices", env={"ALSA_CONFIG_PATH": str(rig.config_path)})
    assert result.returncode == 0, result.stderr
    rows = {line.split("\t")[0]: line.split("\t")[1] for line in result.stdout.splitlines()}
    assert rows["kitchen_mic"] == "in"
    assert rows["kitchen_speaker"] == "out"
    # PortAudio's JACK/ALSA probing chatter is silenced.
    assert "jack" not in result.stderr.lower()
    assert "ALSA lib" not in result.stderr


def test_run_with_broken_config_exits_with_the_reasons(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[vad]\nframe_ms = 15\n")
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 2
    assert f"{path}:vad.frame_ms: must be one of 10, 20, 30 (got 15)" in result.stderr


def test_check_config_rejects_a_corrupt_wake_model(tmp_path: Path) -> None:
    (tmp_path / "mine.tflite").write_bytes(os.urandom(4096))
    path = tmp_path / "config.toml"
    path.write_text('[wake_word]\nmodels = ["mine.tflite"]\n')
    result = run_cli("check-config", str(path))
    assert result.returncode == 1
    assert result.stderr.startswith(f"{path}:wake_word.models: ")
    assert "mine.tflite" in result.stderr


def test_check_config_accepts_a_real_custom_model(tmp_path: Path) -> None:
    from edge_agent.config import builtin_wake_model_dir

    model_dir = builtin_wake_model_dir()
    assert model_dir is not None
    (tmp_path / "mine.tflite").write_bytes((model_dir / "alexa.tflite").read_bytes())
    path = tmp_path / "config.toml"
    path.write_text('[wake_word]\nmodels = ["mine.tflite"]\n')
    result = run_cli("check-config", str(path))
    assert result.returncode == 0, result.stderr


def test_control_commands_say_clearly_when_the_daemon_is_not_running(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path}"\n')
    for command in (["status"], ["stop"], ["say", "hello"], ["volume", "30"], ["history"]):
        cli = subprocess.run(
            [sys.executable, "-m", "edge_agent", *command, "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 1, command
        assert "edge-agent is not running" in cli.stderr and "Traceback" not in cli.stderr

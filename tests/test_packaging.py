"""What a Pi gets: the runtime package alone, without the development kit.

`scripts/install.sh` runs `pip install .` from the checkout root; the emulator, the ALSA
rig, speech synthesis, the demo and the benchmarks live in `devkit/` (their own project)
and must neither be installed by that nor imported by the runtime.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

DEV_ONLY_MODULES = ("edge_agent_devkit", "trustme")

# Imports the daemon module and prints which top-level modules got loaded.
PROBE = """
import json, sys
import edge_agent.app.daemon
import edge_agent.cli
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def _loaded_top_level_modules(python: str | Path, cwd: Path | None = None) -> set[str]:
    out = subprocess.run(
        [str(python), "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=cwd,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_daemon_module_imports_no_development_code_in_the_dev_environment() -> None:
    loaded = _loaded_top_level_modules(sys.executable)
    assert "edge_agent" in loaded
    for name in DEV_ONLY_MODULES:
        assert name not in loaded, f"importing the daemon loaded {name}"


def test_no_runtime_module_names_the_development_kit() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "edge_agent").rglob("*.py")
        if "edge_agent_devkit" in path.read_text() or "trustme" in path.read_text()
    ]
    assert offenders == []


@pytest.mark.timeout(900)
def test_runtime_installs_alone_and_checks_the_shipped_config(tmp_path: Path) -> None:
    # A copy of what `pip install .` reads, so the build leaves nothing in the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "config.toml"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "edge_agent", src / "edge_agent", ignore=shutil.ignore_patterns("__pycache__")
    )
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(src)],
        capture_output=True,
        text=True,
        timeout=840,
        env=env,
        check=False,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    check = subprocess.run(
        [str(env_dir / "bin" / "edge-agent"), "check-config", str(ROOT / "config.toml")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stdout + check.stderr

    loaded = _loaded_top_level_modules(python, cwd=tmp_path)  # not the checkout's copy
    assert "edge_agent" in loaded
    for name in DEV_ONLY_MODULES:
        assert name not in loaded
    missing = subprocess.run(
        [str(python), "-c", "import edge_agent_devkit"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert "ModuleNotFoundError" in missing.stderr, "the runtime install carried the devkit"
    trustme = subprocess.run(
        [str(python), "-m", "pip", "show", "trustme"], capture_output=True, timeout=60, env=env
    )
    assert trustme.returncode != 0, "trustme was installed as a runtime dependency"

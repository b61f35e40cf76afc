"""The arm64 part: run `scripts/check-arm64` and report `arm64_smoke`.

check-arm64 installs the appliance in a Debian 12 arm64 root under QEMU user-mode and
runs a smoke there (check-config, wake models, "hey jarvis", AEC3, webrtcvad, one Live
turn against the emulator); its JSON result has the steps, the package versions and the
workarounds that were active. `arm64_smoke` is that result's `all_passed`: true only
when every step passed, false when the smoke ran and a step failed (the note names it),
null with an error when the smoke could not run at all (no root, no result).

It takes minutes (about 10 the first time, while the roots are built and cached), so the
bench runs it only when asked: `scripts/bench --only arm64`. It needs root (debootstrap,
binfmt_misc, chroot): as root it runs directly, otherwise through `sudo -n`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edge_agent_devkit.bench.report import PartReport, all_keys, repo_root

log = logging.getLogger(__name__)

ARM64_KEYS = all_keys("arm64")
TIMEOUT_S = 3 * 3600  # a first run builds two roots under emulation


def privilege_prefix() -> list[str] | None:
    """[] as root, ["sudo", "-n"] when sudo works without a password, else None."""
    if os.geteuid() == 0:
        return []
    sudo = shutil.which("sudo")
    if sudo is None:
        return None
    ok = subprocess.run([sudo, "-n", "true"], capture_output=True, timeout=30, check=False)
    return [sudo, "-n"] if ok.returncode == 0 else None


def report_from_result(result: dict[str, Any], report: PartReport) -> None:
    """Fill `report` from check-arm64's JSON result."""
    steps = result.get("steps") or []
    if not steps or "all_passed" not in result:
        report.fail(ARM64_KEYS, "check-arm64's result has no steps")
        return
    passed = bool(result["all_passed"]) and all(s.get("ok") for s in steps)
    failed = [f"{s.get('name')} ({s.get('detail')})" for s in steps if not s.get("ok")]
    machine = result.get("machine") or {}
    summary = (
        f"scripts/check-arm64: {sum(1 for s in steps if s.get('ok'))} of {len(steps)} steps "
        f"passed on {machine.get('arch', '?')} ({machine.get('os', '?')}, QEMU user-mode)"
    )
    report.put(
        "arm64_smoke", passed, summary + (f"; failed: {'; '.join(failed)}" if failed else "")
    )
    report.notes["arm64_steps"] = "; ".join(
        f"{'PASS' if s.get('ok') else 'FAIL'} {s.get('name')} {s.get('seconds', 0):.0f} s: "
        f"{s.get('detail')}"
        for s in steps
    )
    versions = result.get("versions") or {}
    report.notes["arm64_versions"] = ", ".join(
        f"{k} {v}" for k, v in versions.items() if v is not None
    )
    cpuinfo = (result.get("workarounds") or {}).get("arm_cpuinfo") or {}
    needed = {True: "still needed", False: "not needed"}.get(cpuinfo.get("needed"), "unknown")
    report.notes["arm64_workarounds"] = (
        f"--arm-cpuinfo {'on' if cpuinfo.get('active') else 'off'}, {needed}: "
        f"{cpuinfo.get('detail', '')}"
    )


def run(quick: bool = False) -> dict[str, Any]:
    """Run check-arm64 once (there is no quick variant: quick changes nothing)."""
    report = PartReport(keys=ARM64_KEYS)
    script = repo_root() / "scripts" / "check-arm64"
    prefix = privilege_prefix()
    if not script.is_file():
        report.fail(ARM64_KEYS, f"{script} is missing")
        return report.finish()
    if prefix is None:
        report.fail(ARM64_KEYS, "check-arm64 needs root (or sudo without a password)")
        return report.finish()
    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-arm64-") as tmp:
        out = Path(tmp) / "result.json"
        # The emulator and the clip run on this machine, in this very interpreter's venv.
        cmd = [*prefix, "bash", str(script), "--json", str(out), "--host-python", sys.executable]
        log.info("bench: %s", " ".join(cmd))
        try:
            # Its progress and summary go straight to this run's stderr, as they come.
            proc = subprocess.run(
                cmd,
                stdout=sys.stderr,
                stderr=subprocess.PIPE,
                text=True,
                timeout=TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            report.fail(ARM64_KEYS, f"check-arm64 took more than {TIMEOUT_S} s")
            return report.finish()
        sys.stderr.write(proc.stderr)
        if out.is_file():
            report_from_result(json.loads(out.read_text()), report)
        else:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            last = lines[-1].strip() if lines else "no message"
            report.fail(ARM64_KEYS, f"check-arm64 exited {proc.returncode} with no result: {last}")
    return report.finish()

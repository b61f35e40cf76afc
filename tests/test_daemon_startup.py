"""SIGTERM while the daemon is still loading models: it stops at once and never says READY.

A Pi Zero takes seconds to load the wake word models; `systemctl stop` (or a restart)
in that window must still end the process within the 2 s systemd is promised. The
daemon runs in a subprocess (real signals, real sd_notify socket, real interpreter exit)
with its model loading replaced by a step that would take a minute.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from edge_agent_devkit.rig.appliance import NotifySocket

SLOW_START = textwrap.dedent(
    """
    import asyncio, dataclasses, sys, time
    from pathlib import Path
    from edge_agent.app import daemon
    from edge_agent.config import Config
    from edge_agent.logsetup import setup_logging

    async def slow_start(self):
        await daemon._in_daemon_thread(time.sleep, 60)  # a model load that takes a minute

    daemon.Daemon._start_components = slow_start
    setup_logging("INFO", "stderr")
    cfg = Config()
    cfg = dataclasses.replace(cfg, daemon=dataclasses.replace(cfg.daemon, state_dir=sys.argv[1]))
    sys.exit(asyncio.run(daemon.Daemon(cfg, Path("config.toml")).run()))
    """
)


def test_sigterm_during_startup_exits_promptly_without_ready(tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "PYTHONUNBUFFERED": "1"}
    for name in ("INVOCATION_ID", "JOURNAL_STREAM", "WATCHDOG_USEC"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_START, str(tmp_path / "state")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert notify.wait_for("STATUS=starting: loading models", 60) is not None
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)  # were the loading thread waited for, this would be 60 s
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        stderr = proc.communicate(timeout=10)[1]
        notify.close()
    assert code == 0, stderr
    assert elapsed < 20, f"exit took {elapsed:.1f} s: the startup thread held it up"
    assert notify.count("STOPPING=1") == 1
    assert notify.count("READY=1") == 0
    assert "stopped during startup" in stderr

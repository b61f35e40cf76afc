"""systemd integration: sd_notify over a real socket, the watchdog policy, the unit file."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.core.watchdog import WatchdogGate
from edge_agent.device.systemd import (
    SystemdNotifier,
    send_datagram,
    watchdog_interval_s,
    watchdog_ping_interval_s,
)

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "edge-agent.service"


# ------------------------------------------------------------------- sd_notify


class NotifySocket:
    """What systemd does: a datagram socket whose path goes in NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = "\0" + address[1:] if address.startswith("@") else address
        self.sock.bind(bind_to)
        self.sock.settimeout(10)

    def recv(self) -> str:
        return self.sock.recv(4096).decode()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    # Short path: AF_UNIX addresses are limited to 108 bytes.
    folder = tempfile.mkdtemp(prefix="ea-", dir="/tmp")
    ns = NotifySocket(os.path.join(folder, "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", ns.address)
    yield ns
    ns.close()
    shutil.rmtree(folder, ignore_errors=True)


def test_ready_status_watchdog_stopping_arrive_on_the_socket(notify_socket: NotifySocket) -> None:
    n = SystemdNotifier()
    assert n.enabled
    assert n.ready("listening for 'hey jarvis'")
    assert notify_socket.recv() == "READY=1\nSTATUS=listening for 'hey jarvis'"
    assert n.status("offline:\nAPI key not valid")
    assert notify_socket.recv() == "STATUS=offline: API key not valid"  # one line
    assert n.watchdog()
    assert notify_socket.recv() == "WATCHDOG=1"
    assert n.stopping("shutting down")
    assert notify_socket.recv() == "STOPPING=1\nSTATUS=shutting down"


def test_reloading_carries_monotonic_usec(notify_socket: NotifySocket) -> None:
    n = SystemdNotifier()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = notify_socket.recv().split("\n")
    assert lines[0] == "RELOADING=1"
    key, value = lines[1].split("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after
    assert n.ready()
    assert notify_socket.recv() == "READY=1"


def test_abstract_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    ns = NotifySocket(f"@edge-agent-test-{os.getpid()}")
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", ns.address)
        assert SystemdNotifier().watchdog()
        assert ns.recv() == "WATCHDOG=1"
        assert send_datagram("STATUS=by hand")
        assert ns.recv() == "STATUS=by hand"
    finally:
        ns.close()


def test_plain_datagram_sender_speaks_the_same_protocol(notify_socket: NotifySocket) -> None:
    n = SystemdNotifier(send=send_datagram)
    assert n.ready("ok")
    assert notify_socket.recv() == "READY=1\nSTATUS=ok"


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    sent: list[str] = []
    n = SystemdNotifier(send=lambda m: sent.append(m) or True)
    assert not n.enabled
    assert not n.ready("x") and not n.watchdog() and not n.reloading() and not n.stopping()
    assert sent == []
    assert not send_datagram("READY=1")


def test_vanished_socket_is_logged_once_and_recovers(
    notify_socket: NotifySocket, caplog: pytest.LogCaptureFixture
) -> None:
    n = SystemdNotifier()
    path = notify_socket.address
    notify_socket.close()
    os.unlink(path)
    with caplog.at_level(logging.INFO, logger="edge_agent.device.systemd"):
        assert [n.watchdog() for _ in range(3)] == [False, False, False]
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "cannot notify systemd" in warnings[0].getMessage()
        back = NotifySocket(path)
        try:
            assert n.watchdog()
            assert back.recv() == "WATCHDOG=1"
        finally:
            back.close()
    assert "work again" in caplog.text


def test_watchdog_interval_from_environment() -> None:
    me = str(os.getpid())
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": me}) == 30.0
    assert watchdog_ping_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": me}) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0  # no PID: ours
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "abc"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({}) is None
    assert watchdog_ping_interval_s({}) is None


# ------------------------------------------------------------- watchdog policy


def test_watchdog_gate_pings_only_while_capture_advances() -> None:
    gate = WatchdogGate(stall_s=5.0)
    assert gate.should_ping(0.0, 0, loop_heartbeat_at=0.0)  # start-up grace
    assert gate.should_ping(1.0, 16_000, loop_heartbeat_at=1.0)
    assert gate.should_ping(6.0, 16_000, loop_heartbeat_at=6.0)  # 5 s without samples: ok
    assert not gate.should_ping(6.5, 16_000, loop_heartbeat_at=6.5)
    assert "no audio captured for 5.5 s" in gate.refusal
    assert gate.should_ping(7.0, 16_160, loop_heartbeat_at=7.0)  # capture is back
    assert gate.refusal == ""


def test_watchdog_gate_needs_a_recent_loop_heartbeat() -> None:
    gate = WatchdogGate(stall_s=5.0, heartbeat_max_age_s=2.0)
    assert gate.should_ping(10.0, 1, loop_heartbeat_at=9.0)
    assert not gate.should_ping(12.5, 2, loop_heartbeat_at=10.0)
    assert "event loop silent" in gate.refusal
    assert gate.should_ping(13.0, 3, loop_heartbeat_at=12.9)


def test_watchdog_gate_when_capture_is_knowingly_absent() -> None:
    gate = WatchdogGate(stall_s=5.0)
    assert gate.should_ping(0.0, 100, 0.0)
    # Device unplugged: the daemon reopens it with backoff; restarting would not help.
    for t in (10.0, 60.0, 120.0):
        assert gate.should_ping(t, 100, t, capture_expected=False)
    # Expected again: a fresh grace period, then the usual rule.
    assert gate.should_ping(124.0, 0, 124.0)
    assert gate.should_ping(129.0, 0, 129.0)
    assert not gate.should_ping(129.5, 0, 129.5)
    # A stream reopened with its counter restarted counts as progress too.
    assert gate.should_ping(130.0, 50, 130.0)
    with pytest.raises(ValueError):
        WatchdogGate(stall_s=0)


# ------------------------------------------------------------------- unit file


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key}", []).append(value)
    return settings


def test_unit_declares_what_the_daemon_relies_on() -> None:
    s = unit_settings(UNIT.read_text())
    expected = {
        "Service.Type": ["notify"],
        "Service.NotifyAccess": ["main"],
        "Service.WatchdogSec": ["30"],
        "Service.Restart": ["on-failure"],
        "Service.RestartSec": ["5"],
        "Service.TimeoutStopSec": ["5"],
        "Service.ExecReload": ["/bin/kill -HUP $MAINPID"],
        "Service.ExecStart": [
            "/opt/edge-agent/venv/bin/edge-agent run --config /etc/edge-agent/config.toml"
        ],
        "Service.User": ["edge-agent"],
        "Service.SupplementaryGroups": ["audio gpio"],
        "Service.StateDirectory": ["edge-agent"],
        # The edge-agent group reaches control.sock; the files inside stay private.
        "Service.StateDirectoryMode": ["0750"],
        "Service.UMask": ["0077"],
        "Service.LoadCredential": ["gemini_api_key:/etc/edge-agent/api_key"],
        "Service.DevicePolicy": ["closed"],
        "Service.PrivateDevices": ["no"],
        "Service.ProtectSystem": ["strict"],
        "Service.CapabilityBoundingSet": [""],
        "Install.WantedBy": ["multi-user.target"],
    }
    for key, value in expected.items():
        assert s.get(key) == value, key
    assert {"char-alsa rw", "char-gpiochip rw"} <= set(s["Service.DeviceAllow"])
    assert "Unit.StartLimitIntervalSec" in s and "Unit.StartLimitBurst" in s
    # lgpio needs a writable working directory for its FIFOs.
    assert s["Service.WorkingDirectory"] == ["/run/edge-agent"]
    assert s["Service.RuntimeDirectory"] == ["edge-agent"]


def test_control_socket_is_for_the_owner_and_its_group(tmp_path: Path) -> None:
    """What StateDirectoryMode=0750 relies on: control.sock is 0660 in the daemon's group,
    even under the unit's UMask=0077 (which keeps every other state file 0600)."""
    import asyncio

    from edge_agent.app.control import ControlServer, control_request

    path = tmp_path / "control.sock"

    async def handler(request: dict) -> dict:
        return {"ok": True, "echo": request}

    async def serve() -> os.stat_result:
        server = ControlServer(path, handler)
        old = os.umask(0o077)
        try:
            await server.start()
        finally:
            os.umask(old)
        try:
            reply = await asyncio.to_thread(control_request, path, {"cmd": "status"})
            assert reply == {"ok": True, "echo": {"cmd": "status"}}
            return path.stat()
        finally:
            await server.stop()

    st = asyncio.run(serve())
    assert st.st_mode & 0o777 == 0o660
    assert st.st_gid == os.getegid()  # Group=edge-agent under systemd


def _analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (apt install systemd)")
    return tool


@pytest.fixture
def runnable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at a binary that exists here (verify checks it)."""
    text = UNIT.read_text()
    shipped = "ExecStart=/opt/edge-agent/venv/bin/edge-agent "
    assert text.count(shipped) == 1
    unit = tmp_path / "edge-agent.service"
    unit.write_text(text.replace(shipped, f"ExecStart={sys.executable} -m edge_agent "))
    return unit


def test_systemd_analyze_verify_is_clean(runnable_unit: Path) -> None:
    tool = _analyze()
    # The service user and the gpio group need not exist for verify (checked here).
    result = subprocess.run(
        [tool, "verify", str(runnable_unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=runnable_unit.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # verify exits 0 even on parse warnings


def test_systemd_analyze_verify_notices_a_bad_key(runnable_unit: Path) -> None:
    """The check above can fail: an unknown key is reported on stderr."""
    tool = _analyze()
    runnable_unit.write_text(runnable_unit.read_text() + "\n[Service]\nWatchdogSecs=30\n")
    result = subprocess.run(
        [tool, "verify", str(runnable_unit)], capture_output=True, text=True, timeout=60
    )
    assert "WatchdogSecs" in result.stderr


def test_systemd_analyze_security_rating_is_2_0_or_better(runnable_unit: Path) -> None:
    tool = _analyze()
    result = subprocess.run(
        [tool, "security", "--offline=yes", "--threshold=20", str(runnable_unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) <= 2.0


# ---------------------------------------------------------------- install.sh

INSTALL = ROOT / "scripts" / "install.sh"
UNIT_REL = "systemd/edge-agent.service"
KEY = "AIzaSyTEST-not-a-real-key-0123456789"


def run_install(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    ours = ("GEMINI_API_KEY", "EDGE_AGENT_ETC", "EDGE_AGENT_BINDIR", "SUDO_USER")
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env.update(env_extra or {})
    return subprocess.run(
        ["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=120, env=env
    )


def planned_commands(stdout: str) -> list[str]:
    return [line[2:] for line in stdout.splitlines() if line.startswith("+ ")]


# Every shell script in scripts/ and scripts/lib/ (Python helpers there are ruff's job).
SCRIPTS = sorted(
    str(p.relative_to(INSTALL.parent))
    for p in [*INSTALL.parent.iterdir(), *(INSTALL.parent / "lib").iterdir()]
    if p.is_file() and p.suffix != ".py"
)


def test_every_script_is_linted() -> None:
    assert {
        "install.sh", "setup", "test", "demo", "bench", "check-fresh", "check-arm64",
        "lib/chroot.sh",
    } <= set(SCRIPTS)  # fmt: skip


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_valid_bash_and_shellcheck_clean(script: str) -> None:
    path = INSTALL.parent / script
    assert subprocess.run(["bash", "-n", str(path)], timeout=30).returncode == 0
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (apt install shellcheck)")
    result = subprocess.run(
        [shellcheck, "-x", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=INSTALL.parent,  # `source lib/...` lines resolve from scripts/
    )
    assert result.returncode == 0, result.stdout


def test_install_dry_run_plans_a_full_install_without_leaking_the_key() -> None:
    result = run_install("--dry-run", env_extra={"GEMINI_API_KEY": KEY})
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert KEY not in out
    assert f"would write $GEMINI_API_KEY ({len(KEY)} characters) to /etc/edge-agent/api_key" in out
    plan = planned_commands(result.stdout)
    # Only these programs may change the system.
    allowed = {
        "env",
        "apt-get",
        "groupadd",
        "useradd",
        "usermod",
        "install",
        "ln",
        "python3",
        "/opt/edge-agent/venv/bin/python",
        "/opt/edge-agent/venv/bin/edge-agent",
        "chmod",
        "chown",
        "systemctl",
    }
    assert {cmd.split()[0] for cmd in plan} <= allowed, plan

    def index(fragment: str) -> int:
        hits = [i for i, cmd in enumerate(plan) if fragment in cmd]
        assert hits, f"{fragment!r} not in plan:\n" + "\n".join(plan)
        return hits[0]

    steps = [
        index("usermod --append --groups audio\\,gpio edge-agent"),
        index(f"-m pip install --quiet {ROOT}"),
        index("ln -sfn /opt/edge-agent/venv/bin/edge-agent /usr/local/bin/edge-agent"),
        index("install -d -m 0755 /etc/edge-agent"),
        index(
            f"install -m 0644 {ROOT}/systemd/edge-agent.service "
            "/etc/systemd/system/edge-agent.service"
        ),
        index("edge-agent check-config /etc/edge-agent/config.toml"),
        index("systemctl enable edge-agent"),
    ]
    assert steps == sorted(steps)
    # Without sudo (no $SUDO_USER) nobody joins the edge-agent group; the output says how.
    assert not any(cmd.startswith("usermod --append --groups edge-agent") for cmd in plan)
    assert "sudo usermod -aG edge-agent USER" in result.stdout
    if not Path("/etc/edge-agent/config.toml").exists():
        index(f"install -m 0644 {ROOT}/config.toml /etc/edge-agent/config.toml")
    if not Path("/run/systemd/system").is_dir():
        assert "systemd is not running here" in result.stdout
        assert not any("systemctl start" in cmd or "restart" in cmd for cmd in plan)
    else:
        assert any(cmd.startswith(("systemctl start", "systemctl restart")) for cmd in plan)


def _a_user_outside_the_edge_agent_group() -> str:
    import grp
    import pwd

    try:
        members = set(grp.getgrnam("edge-agent").gr_mem)
    except KeyError:
        members = set()
    for user in pwd.getpwall():
        if user.pw_name not in members and user.pw_uid != 0:
            return user.pw_name
    pytest.skip("no unprivileged user to try with")


def test_install_adds_the_sudo_user_to_the_edge_agent_group() -> None:
    user = _a_user_outside_the_edge_agent_group()
    result = run_install("--dry-run", "--no-apt", env_extra={"SUDO_USER": user})
    assert result.returncode == 0, result.stderr
    plan = planned_commands(result.stdout)
    join = f"usermod --append --groups edge-agent {user}"
    joins = [i for i, cmd in enumerate(plan) if cmd == join]
    assert len(joins) == 1, plan
    # After the edge-agent user (and with it the group) exists.
    service_user = [i for i, cmd in enumerate(plan) if cmd.endswith("audio\\,gpio edge-agent")]
    assert service_user and service_user[0] < joins[0]
    assert "log out and back in" in result.stdout


@pytest.mark.parametrize("sudo_user", ["root", "no-such-user-edge-agent-test"])
def test_install_adds_no_one_else_to_the_group(sudo_user: str) -> None:
    result = run_install("--dry-run", "--no-apt", env_extra={"SUDO_USER": sudo_user})
    assert result.returncode == 0, result.stderr
    plan = planned_commands(result.stdout)
    assert not any(cmd.startswith("usermod --append --groups edge-agent") for cmd in plan), plan
    assert "log out and back in" not in result.stdout
    if sudo_user != "root":
        assert "is not a user here" in result.stderr


LINK_TARGET = "/opt/edge-agent/venv/bin/edge-agent"


def test_install_links_the_command_once(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    # No bin directory yet: created, then the link.
    result = run_install("--dry-run", "--no-apt", env_extra={"EDGE_AGENT_BINDIR": str(bindir)})
    assert result.returncode == 0, result.stderr
    plan = planned_commands(result.stdout)
    assert f"install -d -m 0755 {bindir}" in plan
    assert f"ln -sfn {LINK_TARGET} {bindir}/edge-agent" in plan
    # A link from an earlier install elsewhere is replaced.
    bindir.mkdir()
    (bindir / "edge-agent").symlink_to("/old/prefix/venv/bin/edge-agent")
    result = run_install("--dry-run", "--no-apt", env_extra={"EDGE_AGENT_BINDIR": str(bindir)})
    plan = planned_commands(result.stdout)
    assert f"ln -sfn {LINK_TARGET} {bindir}/edge-agent" in plan
    assert not any(cmd.startswith(f"install -d -m 0755 {bindir}") for cmd in plan)
    # The right link (dangling here: no venv): nothing to do.
    (bindir / "edge-agent").unlink()
    (bindir / "edge-agent").symlink_to(LINK_TARGET)
    result = run_install("--dry-run", "--no-apt", env_extra={"EDGE_AGENT_BINDIR": str(bindir)})
    assert result.returncode == 0, result.stderr
    assert not any(cmd.startswith("ln ") for cmd in planned_commands(result.stdout))
    assert f"command {bindir}/edge-agent -> {LINK_TARGET} exists" in result.stdout


def test_install_leaves_a_foreign_command_alone(tmp_path: Path) -> None:
    (tmp_path / "edge-agent").write_text("#!/bin/sh\n# pip install outside the venv\n")
    result = run_install("--dry-run", "--no-apt", env_extra={"EDGE_AGENT_BINDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert not any(cmd.startswith("ln ") for cmd in planned_commands(result.stdout))
    assert "is not a symlink: not replacing it" in result.stderr


def test_install_again_keeps_an_edited_config_and_the_same_key(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    edited = "# edited on the device\n[conversation]\nfollow_up_s = 3.0\n"
    (etc / "config.toml").write_text(edited)
    (etc / "api_key").write_text(KEY + "\n")
    before = sorted(p.name for p in etc.iterdir())
    result = run_install(
        "--dry-run", "--no-apt", env_extra={"GEMINI_API_KEY": KEY, "EDGE_AGENT_ETC": str(etc)}
    )
    assert result.returncode == 0, result.stderr
    assert f"keeping existing {etc}/config.toml" in result.stdout
    assert "is already this one" in result.stdout
    plan = planned_commands(result.stdout)
    assert not any("config.toml" in cmd and cmd.startswith("install -m") for cmd in plan)
    assert not any("apt-get" in cmd for cmd in plan)
    assert KEY not in result.stdout + result.stderr
    # A dry run touches nothing.
    assert sorted(p.name for p in etc.iterdir()) == before
    assert (etc / "config.toml").read_text() == edited


def test_install_without_a_key_does_not_start_the_service(tmp_path: Path) -> None:
    result = run_install("--dry-run", "--no-apt", env_extra={"EDGE_AGENT_ETC": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "no API key" in result.stderr
    plan = planned_commands(result.stdout)
    assert not any(cmd.startswith(("systemctl start", "systemctl restart")) for cmd in plan)


def apt_packages(script: Path) -> set[str]:
    match = re.search(r"^APT_PACKAGES=\(([^)]*)\)", script.read_text(), re.MULTILINE)
    assert match, script
    return set(match.group(1).split())


def test_the_scripts_install_what_the_unit_needs() -> None:
    """ExecReload runs /bin/kill, from procps, which minimal Debian images and containers lack
    (and systemd-analyze verify fails without it); install.sh ends with systemctl."""
    assert unit_settings(UNIT.read_text())["Service.ExecReload"][0].startswith("/bin/kill ")
    assert {"procps", "systemd"} <= apt_packages(INSTALL)
    assert {"procps", "systemd"} <= apt_packages(INSTALL.parent / "setup")


@pytest.fixture
def install_readable_by_anyone() -> Iterator[Path]:
    """install.sh and the files it checks for, in a folder every user can read: the checkout
    itself may be in a home folder that only its owner can enter (/root is 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="ea-install-", dir="/tmp"))
    try:
        for rel in ("scripts/install.sh", "pyproject.toml", "config.toml", UNIT_REL):
            (folder / rel).parent.mkdir(exist_ok=True)
            shutil.copyfile(ROOT / rel, folder / rel)
            (folder / rel).chmod(0o644)
        for d in (folder, folder / "scripts", folder / "systemd"):
            d.chmod(0o755)
        yield folder / "scripts" / "install.sh"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_install_refuses_to_run_unprivileged_without_dry_run(
    install_readable_by_anyone: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run install.sh as another user (setpriv --reuid)")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) not installed")
    script = install_readable_by_anyone
    # As nobody it could not change anything even if the check were missing.
    result = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "bash", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        cwd=script.parent,
    )
    assert result.returncode == 1, result.stderr
    assert "run as root" in result.stderr


def test_install_rejects_unknown_options() -> None:
    result = run_install("--dryrun")
    assert result.returncode == 2 and "unknown option" in result.stderr

"""The abilities as the daemon wires them: the tool registry the Live session declares and
calls, with MCP servers listed at session start (bounded), and the control commands."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path
from typing import Any

from edge_agent.app.abilities import MCP_WAIT_S, Abilities, registry_timeout_s
from edge_agent.config import (
    CommandToolConfig,
    Config,
    DaemonConfig,
    GeminiConfig,
    McpServerConfig,
    ToolsConfig,
)
from edge_agent.live.connect_config import build_live_connect_config


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again: nothing listens there


def config(tmp_path: Path, **tools: Any) -> Config:
    return Config(
        gemini=GeminiConfig(tools=("get_time", "set_timer")),
        daemon=DaemonConfig(state_dir=str(tmp_path)),
        tools=ToolsConfig(**tools),
    )


def abilities(cfg: Config) -> Abilities:
    async def status() -> dict[str, Any]:
        return {"state": "idle"}

    return Abilities(
        cfg,
        environ={},
        apply_volume=lambda _p: None,
        play_timer_cue=lambda: None,
        on_timer_event=lambda _e: None,
        end_conversation=lambda: None,
        device_status=status,
    )


ECHO = CommandToolConfig(
    name="echo_args",
    description="Echo.",
    argv=(sys.executable, "-c", "import sys; print(sys.stdin.read())"),
    timeout_s=30.0,
)


def test_command_tools_are_declared_beside_the_enabled_builtins(tmp_path: Path) -> None:
    cfg = config(tmp_path, command=(ECHO,))
    registry = abilities(cfg).registry()
    setup = build_live_connect_config(cfg.gemini, None, registry)
    assert setup.tools is not None
    declared = [d.name for t in setup.tools for d in t.function_declarations or []]
    assert declared == ["get_time", "set_timer", "echo_args"]  # not the other built-ins
    assert registry.timeout_s > 30.0  # the tool's own limit speaks first


def test_the_registry_limit_sits_above_every_mcp_and_command_limit(tmp_path: Path) -> None:
    mcp = McpServerConfig(name="home", url="http://x", connect_timeout_s=5, call_timeout_s=60)
    cfg = config(tmp_path, mcp=(mcp,), command=(ECHO,))
    assert registry_timeout_s(cfg) > 5 + 60 + 0.5


def test_a_down_mcp_server_costs_a_session_at_most_the_wait_and_the_call_an_error(
    tmp_path: Path,
) -> None:
    url = f"http://127.0.0.1:{dead_port()}/mcp"
    mcp = McpServerConfig(name="home", url=url, connect_timeout_s=30.0, call_timeout_s=2.0)
    cfg = config(tmp_path, mcp=(mcp,), command=(ECHO,))

    async def scenario() -> tuple[float, list[str], dict[str, Any]]:
        toolbox = abilities(cfg)
        t0 = time.monotonic()
        registry = await toolbox.session_tools()
        waited = time.monotonic() - t0
        result = await registry.call("home__turn_on", {"name": "kitchen"})
        await toolbox.close()
        return waited, registry.names(), result

    waited, names, result = asyncio.run(scenario())
    assert waited <= MCP_WAIT_S + 0.5
    assert "echo_args" in names and not [n for n in names if n.startswith("home__")]
    assert "error" in result  # an unknown (absent) tool is an error result, not a hang


def test_a_command_tool_gets_shell_syntax_as_data(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    canary.write_text("here")
    cfg = config(tmp_path, command=(ECHO,))

    async def scenario() -> dict[str, Any]:
        registry = abilities(cfg).registry()
        return await registry.call("echo_args", {"text": f"; rm -rf {tmp_path} ; echo gone"})

    result = asyncio.run(scenario())
    assert result == {"text": f"; rm -rf {tmp_path} ; echo gone"}  # its stdin, verbatim
    assert canary.read_text() == "here"

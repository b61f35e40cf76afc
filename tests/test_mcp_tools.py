"""MCP tool servers against real MCP servers built here with the `mcp` package's server API.

"A light that can be switched" stands in for Home Assistant's MCP Server: served over
streamable HTTP on 127.0.0.1 behind a bearer token check (as Home Assistant does with a
long-lived access token), and over stdio as a local command.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from mcp.server.fastmcp import FastMCP

from edge_agent.abilities.mcp_tools import (
    McpServerSpec,
    McpSetupError,
    McpToolbox,
    function_name,
    read_bearer_token,
)
from edge_agent.live.tools import ToolRegistry

TOKEN = "ha-long-lived-token-0123456789abcdef"


@dataclass
class Light:
    on: dict[str, bool] = field(default_factory=lambda: {"kitchen": False})


def light_server(light: Light) -> FastMCP:
    server = FastMCP("light")

    @server.tool()
    def turn_on(name: str) -> str:
        """Turn on a light by name."""
        if name not in light.on:
            raise ValueError(f"no light called {name}")
        light.on[name] = True
        return f"{name} is on"

    @server.tool()
    def turn_off(name: str) -> str:
        """Turn off a light by name."""
        light.on[name] = False
        return f"{name} is off"

    @server.tool()
    async def slow(seconds: float) -> str:
        """Answer after a while."""
        await asyncio.sleep(seconds)
        return "done"

    @server.tool()
    def big() -> str:
        """A very long answer."""
        return "x" * 100_000

    @server.tool(name="weird.name-with:chars")
    def weird() -> str:
        """A tool whose name is not a valid function name."""
        return "ok"

    return server


class RequireBearer:
    """ASGI wrapper: 401 without the right bearer token; records what was sent."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.token = token
        self.seen: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            auth = dict(scope["headers"]).get(b"authorization", b"").decode()
            self.seen.append(auth)
            if auth != f"Bearer {self.token}":
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"401: Unauthorized"})
                return
        await self.app(scope, receive, send)


@dataclass
class HttpServer:
    url: str
    light: Light
    auth: RequireBearer
    stop: Any


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    light = Light()
    auth = RequireBearer(light_server(light).streamable_http_app(), TOKEN)
    sock = free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(auth, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "test MCP server did not start"
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = True
        thread.join(10)

    yield HttpServer(f"http://127.0.0.1:{port}/mcp", light, auth, stop)
    stop()
    sock.close()


def token_file(tmp_path: Path, token: str = TOKEN) -> str:
    path = tmp_path / "ha_token"
    path.write_text(token + "\n")
    return str(path)


def spec(url: str, tmp_path: Path, **kw: Any) -> McpServerSpec:
    return McpServerSpec(name="home", url=url, token_file=token_file(tmp_path), **kw)


async def toolbox_registry(box: McpToolbox) -> tuple[ToolRegistry, list[str]]:
    tools = await box.tools(reserved_names=["get_time"])
    return ToolRegistry(tools, timeout_s=30), [t.name for t in tools]


# --------------------------------------------------------------------------- over HTTP


def test_lists_prefixed_tools_and_switches_the_light(http_server: HttpServer, tmp_path: Path):
    async def main() -> None:
        box = McpToolbox([spec(http_server.url, tmp_path)])
        try:
            registry, names = await toolbox_registry(box)
            assert set(names) == {
                "home__turn_on",
                "home__turn_off",
                "home__slow",
                "home__big",
                "home__weird_name_with_chars",
            }
            decl = registry.declarations(["home__turn_on"])[0]
            schema = decl.parameters_json_schema
            assert schema["type"] == "object" and "name" in schema["properties"]
            assert "$schema" not in schema
            assert "(via home)" in (decl.description or "")
            assert http_server.light.on["kitchen"] is False
            result = await registry.call("home__turn_on", {"name": "kitchen"})
            assert result == {"result": "kitchen is on"}
            assert http_server.light.on["kitchen"] is True
            assert await registry.call("home__weird_name_with_chars", {}) == {"result": "ok"}
        finally:
            await box.close()

    asyncio.run(main())
    assert http_server.auth.seen and set(http_server.auth.seen) == {f"Bearer {TOKEN}"}


def test_the_token_is_sent_and_never_logged(
    http_server: HttpServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every library's DEBUG lines too (httpx, httpcore, mcp)

    async def main() -> None:
        box = McpToolbox([spec(http_server.url, tmp_path)])
        try:
            registry, _ = await toolbox_registry(box)
            await registry.call("home__turn_on", {"name": "kitchen"})
            await registry.call("home__turn_on", {"name": "garage"})  # an error path too
        finally:
            await box.close()

    asyncio.run(main())
    assert http_server.light.on["kitchen"] is True
    assert f"Bearer {TOKEN}" in http_server.auth.seen
    assert len(caplog.records) > 5  # the libraries did log at DEBUG
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
        assert TOKEN not in str(record.__dict__)


def test_wrong_token_leaves_the_server_out_with_one_line(
    http_server: HttpServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> list[str]:
        path = token_file(tmp_path, "not-the-token-xyz")
        box = McpToolbox([McpServerSpec(name="home", url=http_server.url, token_file=path)])
        try:
            first = await box.tools()
            second = await box.tools()  # still down: no second line
            return [t.name for t in first + second]
        finally:
            await box.close()

    with caplog.at_level(logging.WARNING, logger="edge_agent"):
        assert asyncio.run(main()) == []
    lines = [r for r in caplog.records if r.name.startswith("edge_agent")]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "MCP server home" in lines[0].getMessage()
    assert "401" in lines[0].getMessage()


def test_a_server_that_is_down_costs_one_line_and_no_tools(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sock = free_socket()  # bound, not listening: connection refused
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"

    async def main() -> tuple[list[str], float]:
        box = McpToolbox([spec(url, tmp_path, connect_timeout_s=3.0)])
        t0 = time.monotonic()
        try:
            tools = await box.tools()
            await box.tools()
            return [t.name for t in tools], time.monotonic() - t0
        finally:
            await box.close()

    with caplog.at_level(logging.WARNING, logger="edge_agent"):
        names, elapsed = asyncio.run(main())
    sock.close()
    assert names == []
    assert elapsed < 7.0
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("edge_agent")]
    assert len(lines) == 1 and "MCP server home" in lines[0] and "unavailable" in lines[0]


def test_a_server_that_goes_down_mid_session_gives_an_error_result(
    http_server: HttpServer, tmp_path: Path
) -> None:
    async def main() -> tuple[dict[str, Any], float]:
        box = McpToolbox([spec(http_server.url, tmp_path, call_timeout_s=3.0)])
        try:
            registry, _ = await toolbox_registry(box)
            await asyncio.to_thread(http_server.stop)
            t0 = time.monotonic()
            result = await registry.call("home__turn_on", {"name": "kitchen"})
            return result, time.monotonic() - t0
        finally:
            await box.close()

    result, elapsed = asyncio.run(main())
    assert set(result) == {"error"}
    assert "home tool turn_on" in result["error"]
    assert elapsed < 5.0  # the call's timeout, never a hung turn
    assert http_server.light.on["kitchen"] is False


def test_a_slow_tool_times_out_and_the_server_stays_usable(
    http_server: HttpServer, tmp_path: Path
) -> None:
    async def main() -> None:
        box = McpToolbox([spec(http_server.url, tmp_path, call_timeout_s=1.0)])
        try:
            registry, _ = await toolbox_registry(box)
            t0 = time.monotonic()
            result = await registry.call("home__slow", {"seconds": 10})
            elapsed = time.monotonic() - t0
            assert result == {"error": "home tool slow did not answer in time"}
            assert 0.9 <= elapsed < 3.0
            assert await registry.call("home__turn_on", {"name": "kitchen"}) == {
                "result": "kitchen is on"
            }
        finally:
            await box.close()

    asyncio.run(main())
    assert http_server.light.on["kitchen"] is True


def test_oversized_result_and_bad_arguments_are_error_results(
    http_server: HttpServer, tmp_path: Path
) -> None:
    async def main() -> None:
        box = McpToolbox([spec(http_server.url, tmp_path, max_result_chars=5_000)])
        try:
            registry, _ = await toolbox_registry(box)
            big = await registry.call("home__big", {})
            assert set(big) == {"error"} and "too much data" in big["error"]
            missing = await registry.call("home__turn_on", {})
            assert set(missing) == {"error"} and "home tool turn_on failed" in missing["error"]
            unknown = await registry.call("home__turn_on", {"name": "garage"})
            assert "no light called garage" in unknown["error"]
        finally:
            await box.close()

    asyncio.run(main())
    assert http_server.light.on == {"kitchen": False}


def test_a_cancelled_call_changes_nothing_and_the_server_stays_usable(
    http_server: HttpServer, tmp_path: Path
) -> None:
    async def main() -> None:
        box = McpToolbox([spec(http_server.url, tmp_path, call_timeout_s=5.0)])
        try:
            registry, _ = await toolbox_registry(box)
            task = asyncio.create_task(registry.call("home__slow", {"seconds": 3}))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await registry.call("home__turn_on", {"name": "kitchen"}) == {
                "result": "kitchen is on"
            }
        finally:
            await box.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- over stdio

STDIO_SERVER = """
    import json, sys
    from pathlib import Path
    from mcp.server.fastmcp import FastMCP

    state = Path(sys.argv[1])
    server = FastMCP("light")

    @server.tool()
    def turn_on(name: str) -> str:
        '''Turn on a light by name.'''
        state.write_text(json.dumps({name: True}))
        return f"{name} is on"

    @server.tool()
    def get_state() -> str:
        '''The lights that are on.'''
        return state.read_text() if state.exists() else "{}"

    server.run()
"""


def test_stdio_server_lists_and_switches(tmp_path: Path) -> None:
    script = tmp_path / "light_server.py"
    script.write_text(textwrap.dedent(STDIO_SERVER))
    state = tmp_path / "state.json"
    stdio = McpServerSpec(
        name="lamp",
        command=(sys.executable, str(script), str(state)),
        connect_timeout_s=30.0,
        call_timeout_s=10.0,
    )

    async def main() -> None:
        box = McpToolbox([stdio])
        try:
            registry, names = await toolbox_registry(box)
            assert sorted(names) == ["lamp__get_state", "lamp__turn_on"]
            assert await registry.call("lamp__turn_on", {"name": "desk"}) == {
                "result": "desk is on"
            }
            assert await registry.call("lamp__get_state", {}) == {"result": '{"desk": true}'}
        finally:
            await box.close()

    asyncio.run(main())
    assert state.read_text() == '{"desk": true}'


def test_two_servers_at_once_one_of_them_down(http_server: HttpServer, tmp_path: Path) -> None:
    sock = free_socket()
    down = McpServerSpec(name="away", url=f"http://127.0.0.1:{sock.getsockname()[1]}/mcp")

    async def main() -> list[str]:
        box = McpToolbox([down, spec(http_server.url, tmp_path)])
        try:
            return [t.name for t in await box.tools()]
        finally:
            await box.close()

    names = asyncio.run(main())
    sock.close()
    assert "home__turn_on" in names and not any(n.startswith("away__") for n in names)


# --------------------------------------------------------------------------- pure parts


def test_function_names_are_valid_unique_and_bounded() -> None:
    taken: set[str] = {"get_time"}
    a = function_name("home", "HassTurnOn", taken)
    b = function_name("home", "a.b", taken)
    c = function_name("home", "a-b", taken)
    d = function_name("home", "x" * 100, taken)
    e = function_name("home", "x" * 100 + "y", taken)
    assert a == "home__HassTurnOn" and b == "home__a_b"
    assert len({a, b, c, d, e}) == 5
    for name in (a, b, c, d, e):
        assert len(name) <= 64 and name.replace("_", "").isalnum() and name[0].isalpha()


def test_token_from_credential_or_file_never_config(tmp_path: Path) -> None:
    (tmp_path / "ha_token").write_text(" secret-credential-token \n")
    cred = McpServerSpec(name="home", url="http://h/api/mcp", token_credential="ha_token")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert read_bearer_token(cred, env) == "secret-credential-token"
    with pytest.raises(McpSetupError, match="no systemd credentials"):
        read_bearer_token(cred, {})
    missing = McpServerSpec(name="home", url="http://h", token_file=str(tmp_path / "nope"))
    with pytest.raises(McpSetupError, match="cannot read token") as info:
        read_bearer_token(missing, {})
    assert "secret" not in str(info.value)
    assert read_bearer_token(McpServerSpec(name="home", url="http://h"), {}) == ""


def test_the_runtime_imports_mcp_only_when_a_server_is_configured() -> None:
    code = """
        import asyncio, sys
        import edge_agent.abilities.command_tools, edge_agent.abilities.device_tools
        import edge_agent.abilities.history, edge_agent.abilities.timer_tools
        import edge_agent.abilities.volume
        from edge_agent.abilities.mcp_tools import McpServerSpec, McpToolbox
        from edge_agent.config import parse_config
        parse_config('[[tools.mcp]]\\nname = "home"\\nurl = "http://127.0.0.1:9/mcp"\\n')
        assert asyncio.run(McpToolbox([]).tools()) == []
        before = "mcp" in sys.modules
        box = McpToolbox([McpServerSpec(name="x", url="http://127.0.0.1:9/mcp",
                                        connect_timeout_s=2)])
        asyncio.run(box.tools())
        print(before, "mcp" in sys.modules)
    """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["False", "True"]

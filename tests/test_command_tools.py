"""Local command tools, with real processes: argv only (no shell), JSON on stdin, limits."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.abilities.command_tools import CommandToolSpec, child_environment, command_tool
from edge_agent.config import parse_config
from edge_agent.live.tools import ToolRegistry

ECHO_STDIN = """
    import json, os, sys
    data = sys.stdin.read()
    with open(sys.argv[1], "w") as f:
        f.write(data)
    print(json.dumps({"received": json.loads(data), "env": sorted(os.environ)}))
"""


def script(tmp_path: Path, source: str, name: str = "tool.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return str(path)


def spec(argv: list[str], **kw: Any) -> CommandToolSpec:
    schema = {"type": "object", "properties": {"room": {"type": "string"}}}
    return CommandToolSpec(
        name="garage", description="d", argv=tuple(argv), parameters=schema, **kw
    )


def call(tool_spec: CommandToolSpec, args: dict[str, Any]) -> dict[str, Any]:
    registry = ToolRegistry([command_tool(tool_spec)], timeout_s=60)
    return asyncio.run(registry.call(tool_spec.name, args))


def test_shell_syntax_in_an_argument_is_just_text(tmp_path: Path, monkeypatch) -> None:
    marker = tmp_path / "marker"
    marker.write_text("still here")
    received = tmp_path / "received.json"
    evil = f"; rm -rf {marker} ; rm -rf / $(rm -rf {marker}) `rm -rf {marker}` && echo pwned"
    monkeypatch.setenv("GEMINI_API_KEY", "test-key-must-not-leak-0123456789")
    tool = spec([sys.executable, script(tmp_path, ECHO_STDIN), str(received)])
    result = call(tool, {"room": evil})
    assert marker.read_text() == "still here"
    assert json.loads(received.read_text()) == {"room": evil}  # verbatim, as JSON on stdin
    assert result["received"] == {"room": evil}
    assert "GEMINI_API_KEY" not in result["env"] and "CREDENTIALS_DIRECTORY" not in result["env"]


def test_declaration_comes_from_config() -> None:
    decl = command_tool(spec(["/bin/true"])).declaration
    assert decl.name == "garage" and decl.description == "d"
    assert decl.parameters_json_schema == {
        "type": "object",
        "properties": {"room": {"type": "string"}},
    }


def test_spec_from_config(tmp_path: Path) -> None:
    cfg = parse_config(
        textwrap.dedent(
            f"""
            [[tools.command]]
            name = "garage_door"
            description = "Open or close the garage door."
            argv = ["{sys.executable}", "-c", "print(1)"]
            parameters = {{ type = "object", properties = {{ open = {{ type = "boolean" }} }} }}
            timeout_s = 3
            """
        )
    )
    tool_spec = CommandToolSpec.from_config(cfg.tools.command[0])
    assert tool_spec.argv == (sys.executable, "-c", "print(1)")
    assert tool_spec.timeout_s == 3.0
    assert call(tool_spec, {}) == {"output": "1"}


def test_plain_text_output_and_exit_status(tmp_path: Path) -> None:
    ok = spec([sys.executable, "-c", "print('door is closed')"])
    assert call(ok, {}) == {"output": "door is closed"}
    failing = spec([sys.executable, "-c", "import sys; sys.stderr.write('jammed'); sys.exit(3)"])
    result = call(failing, {})
    assert result == {"error": "tool garage failed (exit status 3)", "detail": "jammed"}


def test_timeout_kills_the_process_and_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    source = f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pidfile)!r}, "w").write(str(child.pid))
        time.sleep(60)
    """
    tool = spec([sys.executable, script(tmp_path, source)], timeout_s=1.5)
    t0 = time.monotonic()
    result = call(tool, {})
    assert result == {"error": "tool garage took longer than 1.5 s"}
    assert time.monotonic() - t0 < 5
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the tool's child process survived the timeout")


def test_output_limit(tmp_path: Path) -> None:
    tool = spec([sys.executable, "-c", "print('x' * 100000)"], max_output_bytes=1000)
    assert call(tool, {}) == {"error": "tool garage gave too long an answer"}


def test_a_missing_program_is_an_error_result(tmp_path: Path) -> None:
    result = call(spec([str(tmp_path / "nope")]), {})
    assert result == {"error": "tool garage is not available (No such file or directory)"}


def test_a_program_that_ignores_stdin_still_works() -> None:
    assert call(spec(["/bin/echo", "hi"]), {"room": "x" * 200_000}) == {"output": "hi"}


def test_a_cancelled_call_kills_the_process(tmp_path: Path) -> None:
    started = tmp_path / "started"
    source = f"""
        import os, time
        open({str(started)!r}, "w").write(str(os.getpid()))
        time.sleep(60)
    """
    registry = ToolRegistry([command_tool(spec([sys.executable, script(tmp_path, source)]))])

    async def main() -> None:
        task = asyncio.create_task(registry.call("garage", {}))
        while not started.exists():
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    t0 = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - t0 < 10
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left running
        os.kill(int(started.read_text()), 0)


def test_child_environment_keeps_only_safe_variables() -> None:
    env = child_environment({"PATH": "/x", "GEMINI_API_KEY": "k", "HOME": "/root", "TZ": "UTC"})
    assert env == {"PATH": "/x", "TZ": "UTC", "LANG": "C.UTF-8"}

"""Local command tools: a program the owner names in config.toml, run for a tool call.

The program is started from an argv list, never through a shell, so nothing the model
says is ever parsed as shell syntax; the call's arguments reach it as one JSON object on
stdin, verbatim. It runs with a small environment (no API key or credential of the
daemon leaks into it), in its own process group (a timeout kills it and its children),
with a time limit and a limit on its output. Whatever goes wrong becomes an ``error``
result the model can speak about.

What it prints: a JSON object is passed to the model as the result; any other text is
passed as ``{"output": text}``. A non-zero exit status is an error, with the end of
stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.genai import types

from edge_agent.live.tools import Tool, ToolResult

if TYPE_CHECKING:
    from edge_agent.config import CommandToolConfig

logger = logging.getLogger(__name__)

STDERR_TAIL_CHARS = 300
SAFE_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "TZ")


@dataclass(frozen=True)
class CommandToolSpec:
    name: str
    description: str
    argv: tuple[str, ...]
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})
    timeout_s: float = 10.0
    max_output_bytes: int = 16_384

    @classmethod
    def from_config(cls, cfg: CommandToolConfig) -> CommandToolSpec:
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})


class _TooMuchOutput(Exception):
    pass


def child_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The few variables a command gets: no API key, no credentials directory."""
    env = os.environ if environ is None else environ
    out = {key: env[key] for key in SAFE_ENV_KEYS if key in env}
    out.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    out.setdefault("LANG", "C.UTF-8")
    return out


async def _read_limited(stream: asyncio.StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.read(65_536):
        size += len(chunk)
        if size > limit:
            raise _TooMuchOutput
        chunks.append(chunk)
    return b"".join(chunks)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _stdin_payload(args: Mapping[str, Any]) -> bytes:
    """The arguments as one line of JSON in UTF-8; with \\u escapes instead when a string
    holds a lone surrogate (valid in a JSON escape, not encodable as UTF-8)."""
    try:
        return json.dumps(dict(args), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(dict(args)).encode("ascii")


async def run_command(spec: CommandToolSpec, args: Mapping[str, Any]) -> ToolResult:
    """Run ``spec.argv`` with ``args`` as JSON on stdin; always returns a result dict."""
    payload = _stdin_payload(args)
    try:
        proc = await asyncio.create_subprocess_exec(
            *spec.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=child_environment(),
            start_new_session=True,  # its own process group, killed as one
        )
    except OSError as exc:
        logger.warning("command tool %s cannot start %s: %s", spec.name, spec.argv[0], exc)
        return {"error": f"tool {spec.name} is not available ({exc.strerror or exc})"}
    assert proc.stdin and proc.stdout and proc.stderr
    try:
        async with asyncio.timeout(spec.timeout_s):
            stdout_task = asyncio.ensure_future(_read_limited(proc.stdout, spec.max_output_bytes))
            stderr_task = asyncio.ensure_future(_read_limited(proc.stderr, spec.max_output_bytes))
            try:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    proc.stdin.write(payload)
                    await proc.stdin.drain()
                    proc.stdin.close()
                stdout, stderr = await asyncio.gather(stdout_task, stderr_task)
            finally:
                for task in (stdout_task, stderr_task):
                    task.cancel()
            status = await proc.wait()
    except TimeoutError:
        _kill_group(proc)
        await proc.wait()
        logger.warning("command tool %s timed out after %.1f s", spec.name, spec.timeout_s)
        return {"error": f"tool {spec.name} took longer than {spec.timeout_s:g} s"}
    except _TooMuchOutput:
        _kill_group(proc)
        await proc.wait()
        logger.warning(
            "command tool %s printed more than %d bytes", spec.name, spec.max_output_bytes
        )
        return {"error": f"tool {spec.name} gave too long an answer"}
    except BaseException:  # cancelled: kill it and send nothing
        _kill_group(proc)
        with contextlib.suppress(ProcessLookupError):
            await asyncio.shield(proc.wait())
        raise
    text = stdout.decode("utf-8", errors="replace").strip()
    if status != 0:
        tail = stderr.decode("utf-8", errors="replace").strip()[-STDERR_TAIL_CHARS:]
        logger.warning("command tool %s exited with status %d: %s", spec.name, status, tail)
        return {"error": f"tool {spec.name} failed (exit status {status})", "detail": tail}
    try:
        parsed = json.loads(text) if text.startswith("{") else None
    except json.JSONDecodeError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {"output": text}


def command_tool(spec: CommandToolSpec) -> Tool:
    """A Tool whose declaration comes from the spec and whose call runs the command."""
    schema = dict(spec.parameters) or {"type": "object"}
    declaration = types.FunctionDeclaration(
        name=spec.name, description=spec.description, parameters_json_schema=schema
    )

    async def impl(args: Mapping[str, Any]) -> ToolResult:
        return await run_command(spec, args)

    return Tool(declaration, impl)


def command_tools(specs: Sequence[CommandToolSpec]) -> list[Tool]:
    return [command_tool(spec) for spec in specs]

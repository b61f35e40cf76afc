"""MCP tool servers (Home Assistant's MCP Server and any other) as tools of the model.

Each configured server is reached over streamable HTTP (a URL, with a bearer token read
from a systemd credential or a file, never from config.toml) or by starting a local
command (stdio). At session start ``McpToolbox.tools()`` connects to every server that is
not connected yet, lists its tools and returns them as ``Tool`` objects named
``<server>__<tool>`` (valid function names, no collisions between servers). A call runs
with a timeout and a result size limit; a server that is down or slow costs one log line
and an ``error`` result the model can speak, never a hung turn.

The ``mcp`` package (and its web stack) is imported only inside this module's functions,
so a device without MCP servers never loads it.

One long-lived task per server holds its connection: the SDK's transports are anyio
context managers that must be entered and left in the same task. Calls are made from
the caller's task on the shared session.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.genai import types

from edge_agent.live.tools import Tool, ToolResult
from edge_agent.secrets import register_secret

if TYPE_CHECKING:
    from mcp import ClientSession

    from edge_agent.config import McpServerConfig

logger = logging.getLogger(__name__)

MAX_FUNCTION_NAME = 64
PREFIX_SEPARATOR = "__"
# The SDK's code for "no response within read_timeout_seconds" (HTTP 408).
REQUEST_TIMEOUT_CODE = 408
_INVALID_NAME_CHARS = re.compile(r"[^A-Za-z0-9_]")


class McpSetupError(Exception):
    """A server cannot be used as configured (e.g. its token is missing); says why."""


@dataclass(frozen=True)
class McpServerSpec:
    name: str
    url: str = ""
    command: tuple[str, ...] = ()
    token_credential: str = ""  # systemd credential name ($CREDENTIALS_DIRECTORY/<name>)
    token_file: str = ""
    connect_timeout_s: float = 5.0
    call_timeout_s: float = 8.0
    max_result_chars: int = 32_000

    @classmethod
    def from_config(cls, cfg: McpServerConfig) -> McpServerSpec:
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})


def read_bearer_token(spec: McpServerSpec, environ: Mapping[str, str] | None = None) -> str:
    """The server's token ("" when it needs none), registered for redaction at once."""
    env = os.environ if environ is None else environ
    if spec.token_credential:
        cred_dir = env.get("CREDENTIALS_DIRECTORY", "")
        if not cred_dir:
            raise McpSetupError(
                f"MCP server {spec.name}: token_credential {spec.token_credential!r} set but "
                "no systemd credentials are passed (LoadCredential= in the unit)"
            )
        path = Path(cred_dir) / spec.token_credential
    elif spec.token_file:
        path = Path(spec.token_file)
    else:
        return ""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise McpSetupError(f"MCP server {spec.name}: cannot read token {path}: {reason}") from None
    if not token:
        raise McpSetupError(f"MCP server {spec.name}: token file {path} is empty")
    register_secret(token)
    return token


def function_name(server: str, tool: str, taken: set[str]) -> str:
    """``server__tool`` as a valid, unique function name of at most 64 characters."""
    base = _INVALID_NAME_CHARS.sub("_", tool) or "tool"
    name = f"{server}{PREFIX_SEPARATOR}{base}"
    if len(name) > MAX_FUNCTION_NAME or name in taken:
        digest = hashlib.sha1(tool.encode("utf-8")).hexdigest()[:6]
        name = f"{name[: MAX_FUNCTION_NAME - 7]}_{digest}"
    counter = 2
    while name in taken:  # two tool names that differ only in invalid characters
        suffix = f"_{counter}"
        name = f"{name[: MAX_FUNCTION_NAME - len(suffix)]}{suffix}"
        counter += 1
    taken.add(name)
    return name


def _schema_for_gemini(schema: Mapping[str, Any] | None) -> dict[str, Any]:
    out = {k: v for k, v in (schema or {}).items() if k != "$schema"}
    out.setdefault("type", "object")
    return out


def result_to_tool_result(result: Any, limit_chars: int, label: str) -> ToolResult:
    """A CallToolResult -> what the model gets; errors and oversized results as errors."""
    texts: list[str] = []
    for block in result.content or []:
        text = getattr(block, "text", None)
        texts.append(text if isinstance(text, str) else f"[{block.type} omitted]")
    text = "\n".join(texts)
    if result.isError:
        return {"error": f"{label} failed: {text[:500] or 'no detail'}"}
    # The text blocks are what every server sends (structured content, when present,
    # repeats them as JSON); structured content alone is passed as it is.
    out: dict[str, Any] = {"result": text}
    if not texts and result.structuredContent is not None:
        out["result"] = result.structuredContent
    size = len(json.dumps(out, ensure_ascii=False, default=str))
    if size > limit_chars:
        logger.warning("%s returned %d characters (limit %d)", label, size, limit_chars)
        return {"error": f"{label} returned too much data ({size} characters)"}
    return out


class McpServerConnection:
    """One MCP server: a task that holds the session, and calls made on it."""

    def __init__(self, spec: McpServerSpec, environ: Mapping[str, str] | None = None) -> None:
        self.spec = spec
        self._environ = environ
        self._task: asyncio.Task[None] | None = None
        self._session: ClientSession | None = None
        self._ready: asyncio.Future[None] | None = None
        self._closing: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self.down_reported = False

    @property
    def connected(self) -> bool:
        return self._session is not None and self._task is not None and not self._task.done()

    async def connect(self) -> None:
        """Connect if not connected; raises (after at most connect_timeout_s) on failure."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.connected:
                return
            await self._stop_task()
            token = await asyncio.to_thread(read_bearer_token, self.spec, self._environ)
            loop = asyncio.get_running_loop()
            self._ready = loop.create_future()
            self._closing = asyncio.Event()
            self._task = asyncio.create_task(self._hold(token), name=f"mcp:{self.spec.name}")
            try:
                async with asyncio.timeout(self.spec.connect_timeout_s):
                    await asyncio.shield(self._ready)
            except BaseException:
                await self._stop_task()
                raise

    async def list_tools(self) -> list[Any]:
        """Every tool of the server (following pagination)."""
        session = self._require_session()
        tools: list[Any] = []
        cursor: str | None = None
        async with asyncio.timeout(self.spec.connect_timeout_s):
            while True:
                page = (
                    await session.list_tools(cursor=cursor)
                    if cursor
                    else await session.list_tools()
                )
                tools.extend(page.tools)
                cursor = page.nextCursor
                if not cursor:
                    return tools

    async def call(self, tool: str, args: Mapping[str, Any]) -> Any:
        """Call a tool; raises TimeoutError or the transport's error."""
        if not self.connected:
            await self.connect()
        session = self._require_session()
        timeout = self.spec.call_timeout_s
        async with asyncio.timeout(timeout + 0.5):
            return await session.call_tool(
                tool, dict(args), read_timeout_seconds=timedelta(seconds=timeout)
            )

    async def close(self) -> None:
        await self._stop_task()

    def _require_session(self) -> ClientSession:
        if self._session is None:
            raise ConnectionError(f"MCP server {self.spec.name} is not connected")
        return self._session

    async def _hold(self, token: str) -> None:
        assert self._ready is not None and self._closing is not None
        from mcp import ClientSession

        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await self._open_transport(stack, token)
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                self._session = session
                if not self._ready.done():
                    self._ready.set_result(None)
                await self._closing.wait()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc if isinstance(exc, Exception) else ConnectionError())
            if not isinstance(exc, Exception):
                raise
            logger.debug("MCP server %s connection ended: %r", self.spec.name, exc)
        finally:
            self._session = None

    async def _open_transport(self, stack: contextlib.AsyncExitStack, token: str) -> Any:
        spec = self.spec
        if spec.url:
            import httpx
            from mcp.client.streamable_http import streamable_http_client

            headers = {"Authorization": f"Bearer {token}"} if token else {}
            client = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(spec.call_timeout_s, read=300.0),
                follow_redirects=False,
            )
            await stack.enter_async_context(client)
            read, write, _ = await stack.enter_async_context(
                streamable_http_client(spec.url, http_client=client)
            )
            return read, write
        from mcp.client.stdio import StdioServerParameters, stdio_client

        params = StdioServerParameters(command=spec.command[0], args=list(spec.command[1:]))
        return await stack.enter_async_context(stdio_client(params))

    async def _stop_task(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        if self._closing is not None:
            self._closing.set()
        try:
            async with asyncio.timeout(3.0):
                await asyncio.shield(task)
        except (TimeoutError, Exception):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self._session = None


class McpToolbox:
    """Every configured MCP server; ``tools()`` at session start, ``close()`` at exit."""

    def __init__(
        self, specs: Sequence[McpServerSpec], environ: Mapping[str, str] | None = None
    ) -> None:
        self.connections = [McpServerConnection(spec, environ) for spec in specs]

    async def tools(self, reserved_names: Sequence[str] = ()) -> list[Tool]:
        """Connect where needed and list tools, all servers at once; down servers skipped."""
        if not self.connections:
            return []
        listed = await asyncio.gather(*(self._list(c) for c in self.connections))
        taken = set(reserved_names)
        out: list[Tool] = []
        for conn, tools in zip(self.connections, listed, strict=True):
            out.extend(self._as_tool(conn, tool, taken) for tool in tools)
        return out

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.connections))

    async def _list(self, conn: McpServerConnection) -> list[Any]:
        name = conn.spec.name
        try:
            await conn.connect()
            tools = await conn.list_tools()
        except asyncio.CancelledError:
            raise
        except McpSetupError as exc:
            logger.error("%s", exc)
            return []
        except BaseException as exc:  # down, refused, slow, bad token: one line, go on
            if not conn.down_reported:
                logger.warning(
                    "MCP server %s (%s) unavailable, its tools are left out: %s",
                    name,
                    conn.spec.url or conn.spec.command[0],
                    _describe_failure(exc),
                )
                conn.down_reported = True
            await conn.close()
            return []
        if conn.down_reported:
            logger.info("MCP server %s is back", name)
            conn.down_reported = False
        logger.info("MCP server %s: %d tools", name, len(tools))
        return tools

    @staticmethod
    def _as_tool(conn: McpServerConnection, tool: Any, taken: set[str]) -> Tool:
        fname = function_name(conn.spec.name, tool.name, taken)
        description = (tool.description or tool.title or tool.name).strip()
        declaration = types.FunctionDeclaration(
            name=fname,
            description=f"{description} (via {conn.spec.name})",
            parameters_json_schema=_schema_for_gemini(tool.inputSchema),
        )
        label = f"{conn.spec.name} tool {tool.name}"
        remote_name = tool.name

        async def impl(args: Mapping[str, Any]) -> ToolResult:
            from mcp.shared.exceptions import McpError

            try:
                result = await conn.call(remote_name, args)
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                logger.warning("%s timed out after %.1f s", label, conn.spec.call_timeout_s)
                return {"error": f"{label} did not answer in time"}
            except McpError as exc:  # the server answered with a JSON-RPC error
                if exc.error.code == REQUEST_TIMEOUT_CODE:
                    logger.warning("%s timed out after %.1f s", label, conn.spec.call_timeout_s)
                    return {"error": f"{label} did not answer in time"}
                logger.warning("%s refused the call: %s", label, exc.error.message)
                return {"error": f"{label} refused the call: {exc.error.message[:300]}"}
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    raise
                logger.warning("%s failed: %s", label, _describe_failure(exc))
                await conn.close()  # reconnect on the next call
                return {"error": f"{label} is not reachable"}
            return result_to_tool_result(result, conn.spec.max_result_chars, label)

        return Tool(declaration, impl)


def _describe_failure(exc: BaseException) -> str:
    """A short reason from an exception (task groups wrap the real one)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

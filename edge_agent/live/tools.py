"""Local tools the model may call, and their function declarations for the setup message.

A tool call must never take the session down: unknown names, bad arguments and
exceptions in a tool all become an ``{"error": ...}`` response the model can speak about.
Arguments that are not a JSON object are refused before a tool sees them, and every
string of an answer goes through ``secrets.redact``: what a tool prints (a command's
stderr, an MCP server's error) goes to the model, whose reply is spoken and transcribed.
A tool never runs on the event loop: a coroutine impl is awaited (it must not block), a
plain function runs on a worker thread. Each tool may declare the behaviour it needs
(``behavior``: BLOCKING where the family lets a tool choose) and the scheduling of its
answers (``scheduling``); an impl may also return a ``ToolAnswer`` to choose per call.
See ``live.tool_calls`` for the rule used when neither is given.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.genai import types

from edge_agent.live.profiles import ToolCalls
from edge_agent.live.tool_calls import Scheduling, ToolAnswer
from edge_agent.quoting import short_repr
from edge_agent.secrets import redact

logger = logging.getLogger(__name__)

ToolResult = dict[str, Any]
ToolImpl = Callable[
    [Mapping[str, Any]], ToolResult | ToolAnswer | Awaitable[ToolResult | ToolAnswer]
]


@dataclass(frozen=True)
class Tool:
    declaration: types.FunctionDeclaration
    impl: ToolImpl
    behavior: ToolCalls | None = None  # None: the model family's default
    scheduling: Scheduling | None = None  # None: the rule in live.tool_calls

    @property
    def name(self) -> str:
        return self.declaration.name or ""


class ToolRegistry:
    """Name -> tool; ``call`` always returns a response dict."""

    def __init__(
        self,
        tools: list[Tool] | None = None,
        timeout_s: float = 10.0,
        always_declared: tuple[str, ...] = (),
    ) -> None:
        self._tools = {tool.name: tool for tool in tools or []}
        self.timeout_s = timeout_s
        # Declared whatever gemini.tools lists (MCP and command tools, configured apart).
        self.always_declared = always_declared

    def declarations(self, names: list[str] | None = None) -> list[types.FunctionDeclaration]:
        """Declarations of the enabled tools (all registered ones when names is None)."""
        wanted = self._tools if names is None else [n for n in names if n in self._tools]
        return [self._tools[name].declaration for name in wanted]

    def names(self) -> list[str]:
        return list(self._tools)

    def declared_behaviors(self) -> dict[str, ToolCalls | None]:
        """Name -> the behaviour the tool asks for (None: the family's default)."""
        return {name: tool.behavior for name, tool in self._tools.items()}

    async def call(self, name: str, args: Mapping[str, Any] | None) -> ToolResult:
        """The response dict only (see ``answer`` for the scheduling too)."""
        return (await self.answer(name, args)).response

    async def answer(self, name: str, args: Mapping[str, Any] | None) -> ToolAnswer:
        """Run the tool off the event loop; never raises (but can be cancelled)."""
        answer = await self._answer(name, args)
        return ToolAnswer(_redacted(answer.response), answer.scheduling)

    async def _answer(self, name: str, args: Mapping[str, Any] | None) -> ToolAnswer:
        tool = self._tools.get(name)
        if tool is None:
            logger.warning("model called unknown tool %r", name)
            return ToolAnswer({"error": f"unknown tool {name!r}"})
        if args is not None and not isinstance(args, Mapping):
            logger.warning("model called tool %s with %s arguments", name, type(args).__name__)
            error = f"tool {name!r} takes a JSON object of arguments"
            return ToolAnswer({"error": error}, tool.scheduling)
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await _run_off_loop(tool.impl, dict(args or {}))
        except TimeoutError:
            logger.warning("tool %s timed out after %.1f s", name, self.timeout_s)
            return ToolAnswer({"error": f"tool {name!r} timed out"}, tool.scheduling)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a tool bug must not end the conversation
            logger.warning("tool %s failed: %s", name, exc, exc_info=True)
            error = {"error": f"tool {name!r} failed: {exc.__class__.__name__}"}
            return ToolAnswer(error, tool.scheduling)
        if isinstance(result, ToolAnswer):
            return result
        if not isinstance(result, dict):
            result = {"result": result}
        return ToolAnswer(result, tool.scheduling)


QUOTED_ARGUMENT_CHARS = 40  # of a bad argument, quoted back to the model


def quote_argument(value: Any) -> str:
    """A bad tool argument as an error quotes it: short, whatever the model sent."""
    return short_repr(value, QUOTED_ARGUMENT_CHARS)


def _redacted(value: Any) -> Any:
    """``value`` with every string in it (keys too) passed through ``redact``."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {_redacted(k): _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(item) for item in value]
    return value


async def _run_off_loop(impl: ToolImpl, args: dict[str, Any]) -> Any:
    """A coroutine function is awaited; anything else runs on a worker thread (a slow
    or blocking tool must not stall audio). A cancelled call leaves the thread to
    finish on its own; its result is thrown away."""
    if inspect.iscoroutinefunction(impl):
        return await impl(args)
    result = await asyncio.to_thread(impl, args)
    if inspect.isawaitable(result):
        result = await result
    return result


GET_TIME_DECLARATION = types.FunctionDeclaration(
    name="get_time",
    description="Current local date and time of the device (for questions about time or date).",
    parameters=types.Schema(type=types.Type.OBJECT, properties={}),
)


def get_time_tool(now: Callable[[], datetime] | None = None) -> Tool:
    """get_time -> the device's local time; ``now`` is injectable for tests."""

    def clock() -> datetime:
        return now() if now is not None else datetime.now().astimezone()

    def impl(_args: Mapping[str, Any]) -> ToolResult:
        t = clock()
        return {
            "local_time": t.strftime("%H:%M"),
            "weekday": t.strftime("%A"),
            "date": t.date().isoformat(),
            "iso": t.isoformat(timespec="seconds"),
            "timezone": t.tzname() or "",
        }

    # The user asked for it: spoken, but only once the model is not talking.
    return Tool(GET_TIME_DECLARATION, impl, scheduling=Scheduling.WHEN_IDLE)


def builtin_tools(now: Callable[[], datetime] | None = None) -> ToolRegistry:
    """Every tool named in config.BUILTIN_TOOLS."""
    return ToolRegistry([get_time_tool(now)])

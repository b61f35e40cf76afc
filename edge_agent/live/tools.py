"""Local tools the model may call, and their function declarations for the setup message.

A tool call must never take the session down: unknown names, bad arguments and
exceptions in a tool all become an ``{"error": ...}`` response the model can speak about.
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

logger = logging.getLogger(__name__)

ToolResult = dict[str, Any]
ToolImpl = Callable[[Mapping[str, Any]], ToolResult | Awaitable[ToolResult]]


@dataclass(frozen=True)
class Tool:
    declaration: types.FunctionDeclaration
    impl: ToolImpl

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

    async def call(self, name: str, args: Mapping[str, Any] | None) -> ToolResult:
        tool = self._tools.get(name)
        if tool is None:
            logger.warning("model called unknown tool %r", name)
            return {"error": f"unknown tool {name!r}"}
        try:
            async with asyncio.timeout(self.timeout_s):
                result = tool.impl(dict(args or {}))
                if inspect.isawaitable(result):
                    result = await result
        except TimeoutError:
            logger.warning("tool %s timed out after %.1f s", name, self.timeout_s)
            return {"error": f"tool {name!r} timed out"}
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a tool bug must not end the conversation
            logger.warning("tool %s failed: %s", name, exc, exc_info=True)
            return {"error": f"tool {name!r} failed: {exc.__class__.__name__}"}
        if not isinstance(result, dict):
            return {"result": result}
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

    return Tool(GET_TIME_DECLARATION, impl)


def builtin_tools(now: Callable[[], datetime] | None = None) -> ToolRegistry:
    """Every tool named in config.BUILTIN_TOOLS."""
    return ToolRegistry([get_time_tool(now)])

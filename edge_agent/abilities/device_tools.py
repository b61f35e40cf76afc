"""end_conversation and device_status: declarations, with the daemon's parts injected.

The daemon owns what these report and do (its uptime, state, network check and last
error; how a conversation ends), so the implementations take callables and this module
stays free of the daemon.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from google.genai import types

from edge_agent.live.tools import Tool, ToolResult

DEVICE_TOOL_NAMES = ("end_conversation", "device_status")

END_CONVERSATION = types.FunctionDeclaration(
    name="end_conversation",
    description=(
        "End the conversation when the user says goodbye or that they are done (after your "
        "short reply the device stops listening until the wake word)."
    ),
    parameters=types.Schema(type=types.Type.OBJECT, properties={}),
)

DEVICE_STATUS = types.FunctionDeclaration(
    name="device_status",
    description=(
        "This device's own status: how long it has been running, its state, whether the "
        "network and the service are reachable, and the last error, if any."
    ),
    parameters=types.Schema(type=types.Type.OBJECT, properties={}),
)


def end_conversation_tool(end: Callable[[], None]) -> Tool:
    """``end()`` asks the daemon to close the session once the reply has been spoken."""

    def impl(_args: Mapping[str, Any]) -> ToolResult:
        end()
        return {"ok": True, "note": "the device stops listening after your reply"}

    return Tool(END_CONVERSATION, impl)


StatusSource = Callable[[], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]


def device_status_tool(status: StatusSource) -> Tool:
    """``status()`` returns e.g. uptime_s, state, network_reachable, last_error.

    It may be a coroutine function (a reachability check is network I/O).
    """

    async def impl(_args: Mapping[str, Any]) -> ToolResult:
        result = status()
        if inspect.isawaitable(result):
            result = await result
        return dict(result)

    return Tool(DEVICE_STATUS, impl)

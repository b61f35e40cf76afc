"""The model's tools and the device services behind them, built from config.toml.

One `Abilities` per daemon run: the timer service and its ringer, the volume, the MCP
tool servers, the command tools and the transcript history. `session_tools()` is what
the Live session awaits before each connection: the built-in tools the config enables,
plus every command tool and every MCP tool (``<server>__<tool>``), all declared in the
setup. MCP servers list their tools at session start; a server that is slow to answer
costs that session at most `MCP_WAIT_S` (its tools come with a later session), never
the connection.

The daemon's own parts (the playback gain, the timer cue, how a conversation ends, the
status) come in as callables, so this module builds tools and does not drive the
conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from edge_agent.abilities.command_tools import CommandToolSpec, command_tools
from edge_agent.abilities.device_tools import (
    DEVICE_TOOL_NAMES,
    device_status_tool,
    end_conversation_tool,
)
from edge_agent.abilities.history import HISTORY_FILE, HistoryLog
from edge_agent.abilities.mcp_tools import McpServerSpec, McpToolbox
from edge_agent.abilities.timer_tools import (
    TIMERS_FILE,
    TimerRinger,
    TimerService,
    TimerStore,
    timer_tools,
)
from edge_agent.abilities.timers import RingPolicy, TimerBook, TimerEvent
from edge_agent.abilities.volume import VOLUME_FILE, VolumeControl, volume_tools
from edge_agent.config import Config
from edge_agent.live.tools import Tool, ToolRegistry, get_time_tool

log = logging.getLogger(__name__)

# How long a connection waits for the MCP servers' tool lists (connected servers answer
# in milliseconds; one that is down is left out of this session).
MCP_WAIT_S = 2.0
# The registry's own limit sits above every tool's own limits, so each tool reports its
# timeout in its own words; this one only catches a tool without a limit.
REGISTRY_MARGIN_S = 2.0
DEFAULT_TOOL_TIMEOUT_S = 10.0


def registry_timeout_s(cfg: Config) -> float:
    """Above the slowest MCP call (connect + call) and the slowest command tool."""
    limits = [DEFAULT_TOOL_TIMEOUT_S]
    limits += [m.connect_timeout_s + m.call_timeout_s + 0.5 for m in cfg.tools.mcp]
    limits += [c.timeout_s for c in cfg.tools.command]
    return max(limits) + REGISTRY_MARGIN_S


def history_path(cfg: Config) -> Path:
    return Path(cfg.history.path or Path(cfg.daemon.state_dir) / HISTORY_FILE)


class Abilities:
    """Tools and services of one daemon run; `start()` loads state, `close()` ends it."""

    def __init__(
        self,
        cfg: Config,
        *,
        environ: Mapping[str, str],
        apply_volume: Callable[[int], None],
        play_timer_cue: Callable[[], None],
        on_timer_event: Callable[[TimerEvent], None],
        end_conversation: Callable[[], None],
        device_status: Callable[[], Awaitable[Mapping[str, Any]]],
    ) -> None:
        state_dir = Path(cfg.daemon.state_dir)
        self.cfg = cfg
        book = TimerBook(
            RingPolicy(max_ring_s=cfg.timers.max_ring_s, cue_period_s=cfg.timers.cue_period_s),
            max_timers=cfg.timers.max_timers,
            max_duration_s=cfg.timers.max_duration_s,
        )
        self.timers = TimerService(
            book, TimerStore(state_dir / TIMERS_FILE), listener=on_timer_event
        )
        # The machine shows the ring's LEDs (over every state): the ringer only chimes.
        self.ringer = TimerRinger(self.timers, play_timer_cue, lambda _ringing: None)
        self.volume = VolumeControl(state_dir / VOLUME_FILE, cfg.audio.volume_percent, apply_volume)
        self.mcp = McpToolbox([McpServerSpec.from_config(m) for m in cfg.tools.mcp], environ)
        self.history: HistoryLog | None = None
        if cfg.history.enabled:
            self.history = HistoryLog(
                history_path(cfg),
                max_file_bytes=cfg.history.max_file_bytes,
                keep_files=cfg.history.keep_files,
            )
        commands = command_tools([CommandToolSpec.from_config(c) for c in cfg.tools.command])
        self._builtin: list[Tool] = [
            get_time_tool(),
            *timer_tools(self.timers),
            *volume_tools(self.volume),
            end_conversation_tool(end_conversation),
            device_status_tool(device_status),
        ]
        self._commands = commands
        self._mcp_tools: list[Tool] = []
        self._listing: asyncio.Task[None] | None = None
        self._timeout_s = registry_timeout_s(cfg)
        self.started_at = time.monotonic()

    async def start(self) -> None:
        """Saved volume and timers (timers due while the daemon was down ring now)."""
        await asyncio.to_thread(self.volume.load)
        await self.timers.load()
        if self.cfg.tools.mcp:
            self._start_listing()

    async def run_ringer(self) -> None:
        await self.ringer.run()

    def registry(self) -> ToolRegistry:
        """The tools as they are now: built-ins, command tools, the last MCP lists."""
        extra = [*self._commands, *self._mcp_tools]
        return ToolRegistry(
            [*self._builtin, *extra],
            timeout_s=self._timeout_s,
            always_declared=tuple(t.name for t in extra),
        )

    async def session_tools(self) -> ToolRegistry:
        """For each connection: list the MCP tools again (bounded wait), then the registry."""
        if self.cfg.tools.mcp:
            listing = self._start_listing()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(listing), MCP_WAIT_S)
        return self.registry()

    async def close(self) -> None:
        if self._listing is not None:
            self._listing.cancel()
            with contextlib.suppress(BaseException):
                await self._listing
        await self.mcp.close()

    def _start_listing(self) -> asyncio.Task[None]:
        if self._listing is None or self._listing.done():
            self._listing = asyncio.get_running_loop().create_task(
                self._list_mcp(), name="mcp-list"
            )
        return self._listing

    async def _list_mcp(self) -> None:
        reserved = [t.name for t in (*self._builtin, *self._commands)]
        try:
            self._mcp_tools = await self.mcp.tools(reserved_names=reserved)
        except Exception:  # the toolbox reports each server; a bug here must not stop us
            log.exception("listing the MCP tools failed")


__all__ = ["DEVICE_TOOL_NAMES", "MCP_WAIT_S", "Abilities", "history_path", "registry_timeout_s"]

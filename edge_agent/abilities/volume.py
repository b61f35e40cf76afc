"""Speaker volume (0-100) the model and the control socket can read and set, kept across
restarts in the state directory.

The level lives in memory; the daemon applies it through the injected ``apply`` callable
(the playback gain) and the file is written from a worker thread, so a tool call never
waits for the SD card.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from google.genai import types

from edge_agent.live.tools import Tool, ToolResult, quote_argument
from edge_agent.statefile import read_json, save_json

logger = logging.getLogger(__name__)

VOLUME_FILE = "volume.json"
VOLUME_TOOL_NAMES = ("get_volume", "set_volume")


class VolumeError(ValueError):
    """A level out of range or not a number; the message is meant to be spoken."""


def parse_level(value: Any) -> int:
    """A volume level from the model or the command line -> 0..100, or VolumeError."""
    if isinstance(value, str):
        try:
            value = float(value.strip().removesuffix("%"))
        except ValueError:
            shown = quote_argument(value)
            raise VolumeError(f"the volume must be a number from 0 to 100, not {shown}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise VolumeError(f"the volume must be a number from 0 to 100, not {quote_argument(value)}")
    if not 0 <= value <= 100:
        raise VolumeError(f"the volume goes from 0 to 100 (asked for {_amount(value)})")
    return round(value)


def _amount(value: float) -> str:
    """An out-of-range level as spoken; an int of hundreds of digits does not fit a float."""
    try:
        return f"{value:g}"
    except OverflowError:
        return "more than 100" if value > 0 else "less than 0"


class VolumeControl:
    """The current level; ``load`` reads the saved one, ``set`` applies and saves."""

    def __init__(
        self, path: Path, default_percent: int, apply: Callable[[int], None] | None = None
    ) -> None:
        self.path = path
        self.apply = apply
        self._percent = parse_level(default_percent)
        self._lock = threading.Lock()
        self._seq = 0
        self._saved_seq = -1

    @property
    def percent(self) -> int:
        return self._percent

    def load(self) -> int:
        """The saved level (config default when none or damaged); blocking, call at start."""
        data = read_json(self.path)
        if isinstance(data, dict) and "percent" in data:
            try:
                self._percent = parse_level(data["percent"])
            except VolumeError:
                logger.warning("ignoring bad saved volume in %s", self.path)
        if self.apply is not None:
            self.apply(self._percent)
        return self._percent

    async def set(self, percent: Any) -> int:
        level = parse_level(percent)
        self._percent = level
        if self.apply is not None:
            self.apply(level)
        logger.info("volume %d%%", level)
        self._seq += 1
        await asyncio.to_thread(self._save, level, self._seq)  # a failure is logged once
        return level

    def _save(self, level: int, seq: int) -> None:
        with self._lock:
            if seq > self._saved_seq:
                save_json(self.path, {"percent": level}, "volume")  # retried when it fails
                self._saved_seq = seq


GET_VOLUME = types.FunctionDeclaration(
    name="get_volume",
    description="The device's speaker volume, 0 to 100.",
    parameters=types.Schema(type=types.Type.OBJECT, properties={}),
)

SET_VOLUME = types.FunctionDeclaration(
    name="set_volume",
    description=(
        "Set the device's speaker volume, 0 (silent) to 100 (loudest). For 'louder' or "
        "'quieter', get the volume first and change it by about 10."
    ),
    parameters=types.Schema(
        type=types.Type.OBJECT,
        properties={"percent": types.Schema(type=types.Type.INTEGER)},
        required=["percent"],
    ),
)


def volume_tools(control: VolumeControl) -> list[Tool]:
    def get_volume(_args: Mapping[str, Any]) -> ToolResult:
        return {"percent": control.percent}

    async def set_volume(args: Mapping[str, Any]) -> ToolResult:
        if "percent" not in args:
            return {"error": "say which volume, from 0 to 100"}
        try:
            level = await control.set(args["percent"])
        except VolumeError as exc:
            return {"error": str(exc)}
        return {"ok": True, "percent": level}

    return [Tool(GET_VOLUME, get_volume), Tool(SET_VOLUME, set_volume)]

"""Volume: 0-100, applied at once, saved in the state directory across restarts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from edge_agent.abilities.device_tools import device_status_tool, end_conversation_tool
from edge_agent.abilities.volume import VOLUME_FILE, VolumeControl, volume_tools
from edge_agent.live.tools import ToolRegistry


def test_set_applies_saves_and_survives_a_restart(tmp_path: Path) -> None:
    applied: list[int] = []
    path = tmp_path / VOLUME_FILE

    async def first() -> dict[str, Any]:
        control = VolumeControl(path, 80, applied.append)
        assert control.load() == 80  # nothing saved yet: the config's default
        registry = ToolRegistry(volume_tools(control))
        assert await registry.call("get_volume", {}) == {"percent": 80}
        return await registry.call("set_volume", {"percent": 35})

    assert asyncio.run(first()) == {"ok": True, "percent": 35}
    assert applied == [80, 35]
    assert json.loads(path.read_text()) == {"percent": 35}

    restarted = VolumeControl(path, 80, applied.append)
    assert restarted.load() == 35
    assert applied[-1] == 35
    assert asyncio.run(ToolRegistry(volume_tools(restarted)).call("get_volume", {})) == {
        "percent": 35
    }


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ({}, "say which volume"),
        ({"percent": 150}, "goes from 0 to 100 (asked for 150)"),
        ({"percent": -1}, "goes from 0 to 100"),
        ({"percent": "loud"}, "must be a number from 0 to 100"),
        ({"percent": True}, "must be a number from 0 to 100"),
        ({"percent": float("nan")}, "must be a number from 0 to 100"),
        ({"percent": 10**400}, "asked for more than 100"),  # no float holds it
        ({"percent": float("inf")}, "asked for inf"),
        ({"percent": "x" * 100_000}, "not 'xxxx"),
    ],
)
def test_bad_levels_are_error_results_and_change_nothing(
    tmp_path: Path, args: dict[str, Any], says: str
) -> None:
    control = VolumeControl(tmp_path / VOLUME_FILE, 50)
    result = asyncio.run(ToolRegistry(volume_tools(control)).call("set_volume", args))
    assert set(result) == {"error"} and says in result["error"]
    assert len(result["error"]) < 120  # a hostile value is not read back at length
    assert control.percent == 50
    assert not (tmp_path / VOLUME_FILE).exists()


def test_numeric_text_and_fractions_are_rounded(tmp_path: Path) -> None:
    control = VolumeControl(tmp_path / VOLUME_FILE, 50)
    assert asyncio.run(control.set("42.6%")) == 43


def test_a_damaged_file_falls_back_to_the_default(tmp_path: Path) -> None:
    path = tmp_path / VOLUME_FILE
    path.write_text('{"percent": 900}')
    assert VolumeControl(path, 70).load() == 70
    path.write_text("{not json")
    assert VolumeControl(path, 60).load() == 60


def test_end_conversation_and_device_status_call_the_daemon() -> None:
    ended: list[bool] = []

    async def status() -> dict[str, Any]:
        return {"uptime_s": 12, "state": "listening", "network_reachable": True, "last_error": ""}

    registry = ToolRegistry(
        [end_conversation_tool(lambda: ended.append(True)), device_status_tool(status)]
    )

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        return await registry.call("end_conversation", {}), await registry.call("device_status", {})

    end, stat = asyncio.run(main())
    assert end["ok"] is True and ended == [True]
    assert stat == {
        "uptime_s": 12,
        "state": "listening",
        "network_reachable": True,
        "last_error": "",
    }
    sync = ToolRegistry([device_status_tool(lambda: {"state": "idle"})])
    assert asyncio.run(sync.call("device_status", {})) == {"state": "idle"}

"""End to end, the abilities: `edge-agent run` as a subprocess (the devkit `Appliance`:
shipped config.toml, ALSA FIFO devices, the Live API emulator over TLS, mock GPIO), with
the emulator's tool rule chosen by each test, a real MCP server built with the `mcp`
package, a real command tool, and the control subcommands run as a person would."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent_devkit.rig import speech
from edge_agent_devkit.rig.appliance import Appliance, ApplianceOptions, nonsilent_runs

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not speech.espeak_available(), reason="espeak-ng is needed for speech"),
]

ALL_BUILTINS = [
    "get_time", "set_timer", "list_timers", "cancel_timer",
    "get_volume", "set_volume", "end_conversation", "device_status",
]  # fmt: skip
AUDIBLE = 200


def loud_after(app: Appliance, t: float, timeout: float) -> bool:
    """Whether the speaker played audible audio after monotonic time `t`."""
    start = app.speaker.samples_played_by(t)

    def heard() -> bool:
        tail = app.speaker.samples()[start:]
        return bool(tail.size) and int(np.abs(tail.astype(np.int32)).max()) > AUDIBLE

    return app.wait_until(heard, timeout)


# ------------------------------------------------------------------------ timers


def test_a_timer_set_by_voice_rings_the_button_stops_it_and_timers_survive_a_restart(
    tmp_path: Path,
) -> None:
    opts = ApplianceOptions(
        emulator_args=[
            *("--tool", "set_timer", "--force-tool-call", "--tool-turn", "0", "--tool-turn", "1"),
            *("--tool-args", 'set_timer={"seconds": 10, "name": "tea"}'),
            *("--speech-wpm", "450"),  # the tool's long answer is over before the ring
        ],
        config={
            "gemini": {"tools": ALL_BUILTINS},
            # No follow-up, and the session closes at once: the ring comes while idle.
            "conversation": {"follow_up_s": 0.0, "idle_close_s": 1.0},
            "timers": {"cue_period_s": 1.0},
        },
    )
    with Appliance(tmp_path, opts) as app:
        app.start()
        t0 = time.monotonic()
        app.say(speech.wake_and_ask("set a tea timer for ten seconds"))
        set_line = app.wait_log(r"timer tea set for 10 seconds", 60, t0)
        assert set_line is not None, app.log_text()[-3000:]
        rang = app.wait_log(r"timer tea rings", 15, set_line.t)
        assert rang is not None, app.log_text()[-3000:]
        assert 9.0 <= rang.t - set_line.t <= 11.5, rang.t - set_line.t
        closed = app.wait_log(r"Live session closed", 0, set_line.t)
        assert closed is not None and closed.t < rang.t, "the ring should come while idle"
        status = app.status()
        assert status["timers"]["ringing"] == ["tea"]
        # The ring's blink over idle's dark (LED changes run on the daemon's LED thread, so
        # they may land a moment after the ring's log line).
        assert app.wait_until(lambda: app.status()["leds"]["status"] == "blink 0.25/0.25s", 2)
        # The chime repeats on the speaker while it rings (cue_period_s = 1).
        time.sleep(2.6)
        played = app.speaker.samples()
        ring_from = app.speaker.samples_played_by(rang.t)
        ring_to = app.speaker.samples_played_by(time.monotonic())
        chimes = nonsilent_runs(played[ring_from:ring_to], threshold=AUDIBLE, gap=1600)
        assert len(chimes) >= 2, chimes
        # The button stops the ring and starts nothing else.
        t_press = app.press()
        ended = app.wait_log(r"ring of tea ended: button", 10, t_press)
        assert ended is not None, app.log_text()[-3000:]
        time.sleep(2.0)
        assert not [t for t in app.transitions() if t[0] >= t_press], app.transitions()[-3:]
        status = app.status()
        assert status["timers"]["ringing"] == [] and status["state"] == "idle"
        quiet_from = app.speaker.samples_played_by(ended.t + 0.3)
        quiet_to = app.speaker.samples_played_by(time.monotonic())
        tail = app.speaker.samples()[quiet_from:quiet_to]
        assert tail.size and int(np.abs(tail.astype(np.int32)).max()) <= AUDIBLE

        # A second timer, then a restart before it is due: it rings from the new daemon.
        t1 = time.monotonic()
        app.say(speech.wake_and_ask("set a tea timer for ten seconds"))
        second = app.wait_log(r"timer tea set for 10 seconds", 60, t1)
        assert second is not None, app.log_text()[-3000:]
        app.restart_daemon()
        rang = app.wait_log(r"timer tea rings", 20, second.t)
        assert rang is not None, app.log_text()[-3000:]
        assert rang.t - second.t >= 9.8
        cli = app.cli("timers")
        assert cli.returncode == 0 and "tea: RINGING" in cli.stdout, (cli.stdout, cli.stderr)
        cli = app.cli("stop")
        assert cli.returncode == 0 and "stopped the ring" in cli.stdout, cli.stderr
        assert app.wait_log(r"ring of tea ended: control", 10, rang.t)
    record = app.record
    assert record is not None
    calls = [c for r in record["replies"] for c in r.get("tool_calls", [])]
    assert [c["name"] for c in calls] == ["set_timer", "set_timer"]
    assert calls[0]["response"]["ok"] is True, calls  # the second one's daemon was restarted


# --------------------------------------------------- MCP, command tool, control

LIGHT_SERVER = textwrap.dedent(
    '''
    import json, sys
    from pathlib import Path
    from mcp.server.fastmcp import FastMCP

    state = Path(sys.argv[2])
    server = FastMCP("home", host="127.0.0.1", port=int(sys.argv[1]), log_level="WARNING")

    @server.tool()
    def set_light(on: bool) -> str:
        """Switch the kitchen light on or off."""
        state.write_text(json.dumps({"on": on}))
        return "the kitchen light is " + ("on" if on else "off")

    server.run(transport="streamable-http")
    '''
)

ECHO_TOOL = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    args = json.load(sys.stdin)
    Path(sys.argv[1]).write_text(json.dumps(args))
    print(json.dumps({"ok": True}))
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def light(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[str]]]:
    script = tmp_path / "light_server.py"
    script.write_text(LIGHT_SERVER)
    state = tmp_path / "light.json"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(port), str(state)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "light_server.log", "w"),  # noqa: SIM115 (the child keeps it)
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("the MCP light server did not start")
    try:
        yield f"http://127.0.0.1:{port}/mcp", state, proc
    finally:
        proc.kill()
        proc.wait(5)


def tool_calls(record: dict[str, Any] | None) -> list[dict[str, Any]]:
    assert record is not None
    return [c for r in record["replies"] for c in r.get("tool_calls", [])]


def test_mcp_light_command_tool_and_every_control_subcommand(
    tmp_path: Path, light: tuple[str, Path, subprocess.Popen[str]]
) -> None:
    url, light_state, light_proc = light
    echo = tmp_path / "echo_tool.py"
    echo.write_text(ECHO_TOOL)
    received = tmp_path / "received.json"
    canary = tmp_path / "canary"
    canary.write_text("still here")
    opts = ApplianceOptions(
        emulator_args=[
            "--tool-args",
            'home__set_light={"on": true}',
            "--tool-args",
            'echo_args={"text": "; rm -rf / ; touch ' + str(tmp_path / "pwned") + '"}',
        ],
        config={
            "history": {"enabled": True},
            "tools": {
                "mcp": [{"name": "home", "url": url, "call_timeout_s": 5.0}],
                "command": [
                    {
                        "name": "echo_args",
                        "description": "Echo the arguments back.",
                        "argv": [sys.executable, str(echo), str(received)],
                        "parameters": {
                            "type": "object",
                            "properties": {"text": {"type": "string"}},
                        },
                    }
                ],
            },
        },
    )
    with Appliance(tmp_path / "app", opts) as app:
        app.start()
        assert app.wait_log(r"MCP server home: 1 tools", 30), app.log_text()[-3000:]

        # say: the text is the user's turn; its words name the MCP tool, which the
        # emulator calls: the light goes on and the reply is spoken.
        t0 = time.monotonic()
        cli = app.cli("say", "please call home__set_light to turn on the kitchen light")
        assert cli.returncode == 0 and cli.stdout.strip() == "sent", (cli.stdout, cli.stderr)
        assert app.wait_until(lambda: light_state.exists(), 30), app.log_text()[-3000:]
        assert json.loads(light_state.read_text()) == {"on": True}
        assert loud_after(app, t0, 30)
        assert app.wait_state("idle", 60, t0), app.log_text()[-3000:]

        # A command tool gets "; rm -rf /" as data on stdin; no shell ever sees it.
        t1 = time.monotonic()
        assert app.cli("say", "call echo_args with something nasty").returncode == 0
        assert app.wait_until(lambda: received.exists(), 30), app.log_text()[-3000:]
        assert json.loads(received.read_text())["text"].startswith("; rm -rf / ; touch")
        assert canary.read_text() == "still here" and not (tmp_path / "pwned").exists()
        assert app.wait_state("idle", 60, t1)

        # The MCP server goes down: the call becomes an error result, spoken, one line.
        light_proc.kill()
        light_proc.wait(5)
        t2 = time.monotonic()
        assert app.cli("say", "call home__set_light again").returncode == 0
        assert app.wait_log(r"home tool set_light failed|home tool set_light", 30, t2)
        assert loud_after(app, t2, 30)
        # On 3.8 the call is non-blocking: the model answers at once, and the tool's
        # error result, once the call has timed out, is spoken when the device is idle.
        spoken = app.wait_log(r"the model spoke on its own", 30, t2)
        assert spoken is not None, app.log_text()[-3000:]
        assert app.wait_state("idle", 60, spoken.t)

        # announce: a chime, then the words, then back to idle; a second one queues.
        t3 = time.monotonic()
        first = app.cli("announce", "dinner is ready")
        second = app.cli("announce", "wash your hands")
        assert first.returncode == 0 and second.returncode == 0, (first.stderr, second.stderr)
        assert "queued" in second.stdout, second.stdout
        assert loud_after(app, t3, 20)
        assert app.wait_log(r"text turn \(announce\)", 30, t3)
        assert app.wait_until(lambda: count_log(app, r"text turn \(announce\)", t3) >= 2, 60)
        assert app.wait_until(lambda: count_log(app, r"-> idle: reply played", t3) >= 2, 60)

        # The rest of the control subcommands, through the real CLI.
        status = app.cli("status")
        assert status.returncode == 0 and "state:" in status.stdout and "volume:" in status.stdout
        as_json = json.loads(app.cli("status", "--json").stdout)
        assert as_json["state"] == "idle" and as_json["ok"] is True
        assert app.cli("volume").stdout.strip() == "80%"
        assert app.cli("volume", "35").stdout.strip() == "35%"
        assert (app.state_dir / "volume.json").exists()
        bad = app.cli("volume", "150")
        assert bad.returncode == 1 and "0 to 100" in bad.stderr
        assert app.cli("timers").stdout.strip() == "no timers"
        t4 = time.monotonic()
        trig = app.cli("trigger")
        assert trig.returncode == 0 and "listening" in trig.stdout, trig.stderr
        assert app.wait_log(r"state idle -> (connecting|listening): listen requested", 10, t4)
        stop = app.cli("stop")
        assert stop.returncode == 0 and "stopped the conversation" in stop.stdout
        assert app.wait_log(r"-> idle: stop requested", 10, t4)
        assert app.cli("mute").stdout.strip() == "muted"
        assert app.status()["state"] == "muted"
        refused = app.cli("say", "hello")
        assert refused.returncode == 1 and "muted" in refused.stderr
        assert app.cli("unmute").stdout.strip() == "unmuted"
        assert app.status()["state"] == "idle"
        assert app.cli("button", "press").returncode == 0
        history = app.cli("history", "-n", "50")
        assert history.returncode == 0
        assert "please call home__set_light" in history.stdout, history.stdout
        assert "agent" in history.stdout
    calls = tool_calls(app.record)
    names = [c["name"] for c in calls]
    assert names[:3] == ["home__set_light", "echo_args", "home__set_light"], names
    assert "error" in calls[2]["response"], calls[2]
    assert app.record is not None
    messages = [m for _, m in app.record["messages"]]
    assert len([m for m in messages if "word for word" in json.dumps(m)]) == 2
    # Not running: a clear message, not a traceback.
    gone = app.cli("status")
    assert gone.returncode == 1 and "not running" in gone.stderr, gone.stderr


def count_log(app: Appliance, pattern: str, since: float) -> int:
    import re

    return sum(1 for line in list(app.lines) if line.t >= since and re.search(pattern, line.text))

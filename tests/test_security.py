"""Security: the API key never shows, files stay private, hostile tool arguments are data.

The key sweep of tests/conftest.py covers everything the suite produced; these tests
aim at the paths most likely to leak (a crash, DEBUG logs of the web libraries, a
refused key, `edge-agent status`, a tool that prints the key, transcripts) and prove
the sweep itself can fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import find_leaks, text_leaks

from edge_agent.abilities.command_tools import CommandToolSpec, command_tool
from edge_agent.abilities.timer_tools import TimerService, TimerStore, timer_tools
from edge_agent.abilities.timers import RingPolicy, TimerBook
from edge_agent.app.control import control_request
from edge_agent.live.profiles import ToolCalls
from edge_agent.live.tool_calls import ToolCallBook
from edge_agent.live.tools import ToolRegistry
from edge_agent.secrets import (
    REDACTED,
    ApiKeyMissing,
    permission_warnings,
    redact,
    resolve_api_key,
)
from edge_agent_devkit.rig.appliance import API_KEY, Appliance, ApplianceOptions

pytestmark = [pytest.mark.shelf, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[1]
TWO_LINE_KEY = f"{API_KEY}-old\n{API_KEY}-new"  # a key file with two keys pasted in


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    paths = [str(ROOT), str(ROOT / "devkit"), str(ROOT / "tests")]
    full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(paths)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


# ------------------------------------------------------------------ the sweep itself


def test_the_sweep_finds_a_planted_key_and_names_the_file(tmp_path: Path) -> None:
    planted = tmp_path / "deep" / "daemon.log"
    planted.parent.mkdir()
    # Across the sweep's read-chunk boundary, in a file larger than one chunk.
    planted.write_bytes(b"x" * ((8 << 20) - 5) + f"key={API_KEY}\n".encode())
    key_file = tmp_path / "api_key"
    key_file.write_text(API_KEY + "\n")  # a key file written on purpose: not a leak
    os.mkfifo(tmp_path / "mic.fifo")  # the rig's FIFOs: never opened (it would block)
    (tmp_path / "clean.txt").write_text("nothing here")
    try:
        assert find_leaks([tmp_path]) == [planted]
        assert text_leaks(f"Captured log: {API_KEY}") and not text_leaks("clean")
    finally:
        planted.unlink()  # the session-end sweep must not find the plant
    assert find_leaks([tmp_path]) == []


# ------------------------------------------------------------------ redaction paths


def test_every_spelling_of_a_malformed_key_is_redacted_and_the_key_is_refused() -> None:
    with pytest.raises(ApiKeyMissing) as info:
        resolve_api_key("", {"GEMINI_API_KEY": TWO_LINE_KEY})
    message = str(info.value)
    assert "environment variable GEMINI_API_KEY" in message and "one line" in message
    assert API_KEY not in message
    # What websockets raises for such a header, as str, repr and JSON: all masked.
    error = ValueError(f"invalid x-goog-api-key header: {TWO_LINE_KEY}")
    for text in (str(error), repr(error), json.dumps({"e": str(error)})):
        assert API_KEY not in redact(text), text
    assert API_KEY not in redact(f"wss://h/ws?key={TWO_LINE_KEY.replace(chr(10), '%0A')}")


def test_crash_output_goes_through_the_redacting_log() -> None:
    """Uncaught exceptions (main thread, another thread, __del__) quote the key; what
    reaches stderr, the journal under systemd, is redacted and still a traceback."""
    result = run_python(
        """
        import threading
        from edge_agent.logsetup import setup_logging
        from edge_agent.secrets import resolve_api_key
        setup_logging("INFO", "stderr")
        key = resolve_api_key("").value
        def boom():
            raise RuntimeError("thread failed with " + key)
        worker = threading.Thread(target=boom, name="worker")
        worker.start(); worker.join()
        class Leaky:
            def __del__(self):
                raise ValueError("__del__ failed with " + key)
        Leaky()
        raise ConnectionError("wss://host/ws?key=" + key)
        """,
        {"GEMINI_API_KEY": API_KEY},
    )
    assert result.returncode == 1
    err = result.stderr
    assert API_KEY not in err, err
    assert err.count("Traceback") == 3, err
    assert "uncaught exception in thread worker" in err
    assert "uncaught exception (Exception ignored in: <function Leaky.__del__" in err
    assert "uncaught exception in the main thread" in err
    assert err.count(REDACTED) >= 3


def test_websockets_and_httpx_at_debug_never_show_the_key() -> None:
    """The SDK sends the key as the x-goog-api-key header (WebSocket and REST); with the
    web libraries' loggers at DEBUG their header dumps pass through the redaction."""
    result = run_python(
        """
        import asyncio, logging
        from google import genai
        from google.genai import types
        from edge_agent.logsetup import setup_logging
        from edge_agent.secrets import resolve_api_key
        from sim_fixtures import emulator, live_config
        setup_logging("DEBUG", "stderr")
        for name in ("websockets", "httpx", "httpcore", "google_genai"):
            logging.getLogger(name).setLevel(logging.DEBUG)
        key = resolve_api_key("").value

        async def main():
            async with emulator(valid_api_keys=(key,)) as emu:
                ctx = emu.client_ssl_context()
                client = genai.Client(api_key=key, http_options=types.HttpOptions(
                    base_url=emu.base_url, client_args={"verify": ctx},
                    async_client_args={"ssl": ctx, "verify": ctx}))
                async with client.aio.live.connect(
                        model="gemini-3.8-live", config=live_config()) as session:
                    await session.send_client_content(
                        turns=types.Content(role="user", parts=[types.Part(text="hi")]))
                    async for _ in session.receive():
                        pass
                models = [m.name async for m in await client.aio.models.list()]
                assert models, models
        asyncio.run(main())
        """,
        {"GEMINI_API_KEY": API_KEY},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    err = result.stderr
    assert API_KEY not in err
    # The header dumps were logged (so the check above looked at them), masked.
    assert "x-goog-api-key: [REDACTED]" in err.lower().replace("[redacted]", "[REDACTED]")
    assert "HTTP Request: GET" in err


# ------------------------------------------------------------------ file permissions


def test_permission_warnings_name_the_file_and_the_fix(tmp_path: Path) -> None:
    key_file, config = tmp_path / "api_key", tmp_path / "config.toml"
    key_file.write_text(API_KEY)
    config.write_text(f'[gemini]\napi_key_file = "{key_file}"\n')
    key_file.chmod(0o600)
    config.chmod(0o644)  # no secret in it; users' `edge-agent status` reads it
    assert permission_warnings(config, str(key_file)) == []
    key_file.chmod(0o640)  # root:edge-agent 0640 is a valid way to share it
    assert permission_warnings(config, str(key_file)) == []
    key_file.chmod(0o644)
    config.chmod(0o664)  # anyone in the group could send the key elsewhere (base_url)
    warnings = permission_warnings(config, str(key_file))
    assert len(warnings) == 2, warnings
    assert str(key_file) in warnings[0] and f"chmod 600 {key_file}" in warnings[0]
    assert f"chmod go-w {config}" in warnings[1]
    check = subprocess.run(
        [sys.executable, "-m", "edge_agent", "check-config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr  # a warning, not a broken config
    assert f"WARNING: {warnings[0]}" in check.stderr and API_KEY not in check.stderr


# ------------------------------------------------------------------ hostile tool arguments

CANARY_TEXT = "still here"


def hostile_strings(canary: Path) -> list[Any]:
    return [
        f"; rm -f {canary}", f"$(rm -f {canary})", f"`rm -f {canary}`", f"| rm -f {canary}",
        "../../../../../../etc/passwd", str(canary), "a\x00b", "x" * 200_000,
        "tea\u202e\u200b\x1b[2J\nERROR fake log line", "\ud800", 10**400, -1, 1e308,
        float("nan"), True, None, [], {"nested": {"deep": [1, 2]}},
    ]  # fmt: skip


ECHO_TOOL = """
import json, sys
args = json.load(sys.stdin)
with open(sys.argv[1], "a") as out:
    out.write(json.dumps(args) + "\\n")
print(json.dumps({"ok": True}))
"""


def test_hostile_arguments_through_the_real_dispatch_are_data(tmp_path: Path) -> None:
    """Every built-in tool with arguments, and a command tool, get hostile values through
    ToolRegistry.answer and ToolCallBook.response_for: each call answers (an error the
    model can speak, or a result), no shell runs, the canary stays, files stay inside
    the state directory."""
    canary = tmp_path / "canary"
    canary.write_text(CANARY_TEXT)
    state = tmp_path / "state"
    state.mkdir()
    received = tmp_path / "received.jsonl"
    echo = tmp_path / "echo_tool.py"
    echo.write_text(ECHO_TOOL)

    async def main() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        book = TimerBook(RingPolicy(max_ring_s=60, cue_period_s=5), max_timers=5)
        service = TimerService(book, TimerStore(state / "timers.json"))
        spec = CommandToolSpec(
            name="echo", description="d", argv=(sys.executable, str(echo), str(received))
        )
        registry = ToolRegistry([*timer_tools(service), command_tool(spec)], timeout_s=30)
        calls = ToolCallBook()
        out = []
        values = hostile_strings(canary)
        cases: list[tuple[str, Any]] = [("set_timer", {"minutes": v}) for v in values]
        cases += [("set_timer", {"seconds": 30, "name": v}) for v in values]
        cases += [("cancel_timer", {"name": v}) for v in values]
        cases += [("echo", {"text": v}) for v in values if v == v]  # NaN is not JSON
        cases += [("echo", "not an object"), ("set_timer", [1, 2]), ("../../bin/sh", {})]
        for index, (name, args) in enumerate(cases):
            call_id = f"c{index}"
            calls.called(call_id, name, ToolCalls.NON_BLOCKING)
            answer = await registry.answer(name, args)
            response = calls.response_for(call_id, answer)
            assert response is not None and response.response is not None
            out.append((name, args, response.response))
        return out

    results = asyncio.run(main())
    assert canary.read_text() == CANARY_TEXT
    assert sorted(p.name for p in state.iterdir()) == ["timers.json"]
    for name, args, response in results:
        assert isinstance(response, dict) and response, (name, args)
        assert "failed:" not in json.dumps(response), (name, args, response)  # no crash
        if "error" in response:
            assert isinstance(response["error"], str) and len(response["error"]) < 300
    # Non-objects and unknown names: a clear error, and the tool never ran.
    tail = {json.dumps(a): r for n, a, r in results[-3:]}
    assert "JSON object" in tail['"not an object"']["error"]
    assert "JSON object" in tail["[1, 2]"]["error"]
    assert "unknown tool" in tail["{}"]["error"]
    # Timer names are plain text: no control, format or newline characters survive.
    named = [r["timer"]["name"] for n, a, r in results if n == "set_timer" and "timer" in r]
    assert "tea [2J ERROR fake log line" in named, named
    for name in named:
        assert name.isprintable() and len(name) <= 40, name
    cancelled = [r["cancelled"]["name"] for n, a, r in results if "cancelled" in r]
    assert "tea [2J ERROR fake log line" in cancelled, cancelled  # found by the same text
    json.loads((state / "timers.json").read_text(encoding="utf-8"))  # still saved, UTF-8
    # The command tool got each string verbatim as JSON on stdin (NUL and a lone
    # surrogate included); nothing was parsed by a shell.
    lines = received.read_text(encoding="utf-8", errors="surrogatepass").splitlines()
    got = [json.loads(line)["text"] for line in lines]
    sent = [v for v in hostile_strings(canary) if v == v]
    assert got == [json.loads(json.dumps(v)) for v in sent]


# ------------------------------------------------------------------ the real daemon

LEAKY_TOOL = """
import json, sys
args = json.load(sys.stdin)
with open(sys.argv[2], "a") as out:
    out.write(json.dumps(args) + "\\n")
key = open(sys.argv[1]).read().strip()
if args.get("fail", True):
    sys.stderr.write("cannot reach the thing with key " + key + "\\n")
    sys.exit(3)
print(json.dumps({"ok": True, "debug": "used key " + key}))
"""


def private(path: Path) -> bool:
    return stat.S_IMODE(path.lstat().st_mode) & 0o007 == 0


@pytest.mark.parametrize("umask", [0o000, 0o022], ids=["umask-0000", "umask-0022"])
def test_a_daemon_run_leaks_no_key_and_keeps_its_files_private(tmp_path: Path, umask: int) -> None:
    canary = tmp_path / "canary"
    canary.write_text(CANARY_TEXT)
    key_file = tmp_path / "api_key"  # the leaky tool reads the key here (child env has none)
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o644)  # world-readable: the daemon warns at start
    leaky, received = tmp_path / "leaky.py", tmp_path / "received.jsonl"
    leaky.write_text(LEAKY_TOOL)
    fail = umask == 0o000
    hostile = f"; rm -f {canary} $(rm -f {canary}) `rm -f {canary}` ../../etc/passwd \x00"
    opts = ApplianceOptions(
        log_level="DEBUG" if fail else "INFO",
        emulator_args=[
            "--no-espeak",
            "--reply-text",
            "Done.",
            "--tool-args",
            "set_timer="
            + json.dumps(
                {"hours": 10**400} if fail else {"minutes": 5, "name": "tea\x1b[2J\u202e\n"}
            ),
            "--tool-args",
            "cancel_timer=" + json.dumps({"name": "../../../../etc/passwd"}),
            "--tool-args",
            "leaky=" + json.dumps({"text": hostile, "fail": fail}),
        ],
        config={
            "gemini": {
                "tools": ["set_timer", "cancel_timer", "list_timers"],
                "api_key_file": str(key_file),
            },
            "history": {"enabled": True},
            "tools": {
                "command": [
                    {
                        "name": "leaky",
                        "description": "Does a thing.",
                        "argv": [sys.executable, str(leaky), str(key_file), str(received)],
                        "parameters": {
                            "type": "object",
                            "properties": {"text": {"type": "string"}},
                        },
                    }
                ]
            },
        },
    )
    old = os.umask(umask)
    try:
        with Appliance(tmp_path / "app", opts) as app:
            app.start()
            sock = app.state_dir / "control.sock"
            for tool in ("set_timer", "cancel_timer", "leaky"):
                t0 = time.monotonic()
                reply = control_request(sock, {"cmd": "say", "text": f"please call {tool}"})
                assert reply.get("ok"), reply
                # The answer comes back to the model, which speaks about it.
                spoke = app.wait_log(rf"gemini said: The {tool} tool returned", 60, t0)
                assert spoke is not None, app.log_text()[-3000:]
                assert app.wait_log(r"-> idle", 60, spoke.t), app.log_text()[-3000:]
            assert app.wait_until(received.exists, 10)
            assert control_request(sock, {"cmd": "volume", "percent": 35})["ok"]
            assert control_request(sock, {"cmd": "mute"})["ok"]
            status_text = app.cli("status")
            status_json = app.cli("status", "--json")
            assert status_text.returncode == 0 and "state:" in status_text.stdout
            assert json.loads(status_json.stdout)["ok"] is True
            assert app.proc is not None and app.proc.poll() is None  # it survived
            # While it runs (control.sock goes away with it).
            modes = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in app.state_dir.iterdir()}
            assert app.stop()[0] == 0
    finally:
        os.umask(old)
    log = app.log_text()
    assert f"chmod 600 {key_file}" in log  # the world-readable key file was named
    assert canary.read_text() == CANARY_TEXT
    assert json.loads(received.read_text().splitlines()[0])["text"] == hostile
    # Nothing of the run holds the key: logs, record, transcript, state, CLI output.
    assert find_leaks([tmp_path]) == []
    for text in (log, status_text.stdout, status_json.stdout, status_text.stderr):
        assert API_KEY not in text
    assert "uncaught exception" not in log and "Traceback" not in log
    # The model got an answer for each call; the key the tool printed is masked.
    calls = {c["name"]: c for r in (app.record or {})["replies"] for c in r.get("tool_calls", [])}
    assert set(calls) == {"set_timer", "cancel_timer", "leaky"}, calls
    assert "error" in calls["cancel_timer"]["response"]
    leaky_answer = json.dumps(calls["leaky"]["response"])
    assert REDACTED in leaky_answer and API_KEY not in leaky_answer
    if fail:
        assert calls["set_timer"]["response"] == {"error": "hours is far too large"}
    else:
        assert calls["set_timer"]["response"]["timer"]["name"] == "tea [2J"
    # Private files whatever the umask: the folder, and every file in it (control.sock
    # is 0660 for the edge-agent group, the transcript 0640; the rest 0600).
    assert private(app.state_dir), oct(stat.S_IMODE(app.state_dir.stat().st_mode))
    assert {"control.sock", "history.jsonl", "muted", "volume.json"} <= set(modes), modes
    assert all(mode & 0o007 == 0 for mode in modes.values()), modes


def test_refused_and_malformed_keys_never_show(tmp_path: Path) -> None:
    """A key the service refuses, at DEBUG: not in the log, STATUS=, `edge-agent status`.
    A key file with two keys in it: refused before it is sent, with a clear reason."""
    refused = f"{API_KEY}-refused"
    with Appliance(tmp_path, ApplianceOptions(api_key=refused, log_level="DEBUG")) as app:
        app.start()
        t0 = app.press()
        assert app.wait_state("offline", 30, t0), app.log_text()[-3000:]
        status = app.cli("status")
        status_json = app.cli("status", "--json")
        assert status.returncode == 0 and "API key" in status.stdout, status.stdout
        assert app.notify is not None
        texts = [app.log_text(), status.stdout, status_json.stdout, *app.notify.statuses()]
        assert app.stop()[0] == 0
    assert all(API_KEY not in text for text in texts)
    config = tmp_path / "config.toml"
    probe = subprocess.run(
        [sys.executable, "-m", "edge_agent", "probe", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "GEMINI_API_KEY": TWO_LINE_KEY},
    )  # fmt: skip
    assert probe.returncode == 2, probe.stdout + probe.stderr  # ProbeExit.CONFIG
    assert "not a single line" in probe.stderr
    assert API_KEY not in probe.stdout + probe.stderr
    assert find_leaks([tmp_path]) == []


@pytest.mark.shelf
def test_a_bad_value_is_quoted_short_and_never_raises() -> None:
    """Config problems and tool errors quote what was sent through one helper."""
    from edge_agent.quoting import short_repr

    assert short_repr("x" * 100_000, 40) == "'" + "x" * 36 + "..."
    assert short_repr(10**5000, 40) == f"an integer of {(10**5000).bit_length()} bits"
    assert short_repr([10**5000], 40) == "a value too large to show"  # repr raises inside
    assert short_repr({"a": 1}, 40) == "{'a': 1}"

"""Command line: `edge-agent run | check-config | probe | devices | version` and, for the
running daemon over its control socket: `status | trigger | stop | mute | unmute | volume |
timers | say | announce | history | button`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from edge_agent import __version__
from edge_agent.app.checks import model_problems
from edge_agent.config import ConfigError, load_config
from edge_agent.secrets import redact

DEFAULT_CONFIG = "/etc/edge-agent/config.toml"


def _check_config(args: argparse.Namespace) -> int:
    from edge_agent.secrets import permission_warnings

    try:
        cfg = load_config(args.path)
        problems = model_problems(cfg)
    except ConfigError as exc:
        problems = exc.problems
    else:
        for warning in permission_warnings(args.path, cfg.gemini.api_key_file):
            print(f"WARNING: {warning}", file=sys.stderr)
    if problems:
        for line in problems:
            print(redact(line), file=sys.stderr)
        print(f"{args.path}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.path}: OK")
    return 0


def _probe(args: argparse.Namespace) -> int:
    """One Live session with the configured key, model and endpoint; exit codes: ProbeExit."""
    import asyncio

    from edge_agent.live.probe import ProbeExit, run_probe
    from edge_agent.secrets import ApiKeyMissing, resolve_api_key

    try:
        cfg = load_config(args.config)
        key = resolve_api_key(cfg.gemini.api_key_file)
    except ConfigError as exc:
        for line in exc.problems:
            print(redact(line), file=sys.stderr)
        return int(ProbeExit.CONFIG)
    except ApiKeyMissing as exc:
        print(redact(str(exc)), file=sys.stderr)
        return int(ProbeExit.CONFIG)
    report = asyncio.run(run_probe(cfg.gemini, key.value))
    for line in report.lines():
        print(line)
    return int(report.exit)


def _devices(args: argparse.Namespace) -> int:
    from edge_agent.audio.devices import list_devices

    try:
        devices = list_devices()
    except Exception as exc:  # PortAudio failing to start is a message, not a traceback
        print(f"cannot list audio devices: {redact(str(exc))}", file=sys.stderr)
        return 1
    if not devices:
        print("no audio devices found", file=sys.stderr)
        return 1
    for dev in devices:
        directions = "+".join(
            d for d, n in (("in", dev.max_input_channels), ("out", dev.max_output_channels)) if n
        )
        print(f"{dev.name}\t{directions}\t{int(dev.default_rate_hz)} Hz")
    return 0


def _control(
    args: argparse.Namespace,
    request: dict[str, Any],
    show: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """One request to the running daemon; `show` prints a successful answer."""
    import json

    from edge_agent.app.control import control_request

    try:
        state_dir = load_config(args.config).daemon.state_dir
    except ConfigError:
        state_dir = "/var/lib/edge-agent"
    path = f"{state_dir}/control.sock"
    try:
        reply = control_request(path, request)
    except PermissionError as exc:
        print(
            f"edge-agent: no access to {path} ({exc.strerror}): run with sudo, or join the "
            "edge-agent group (sudo usermod -aG edge-agent $USER) and log in again",
            file=sys.stderr,
        )
        return 1
    except (FileNotFoundError, ConnectionRefusedError):
        print(
            f"edge-agent is not running (nothing answers at {path}); start it with "
            "sudo systemctl start edge-agent, and see journalctl -u edge-agent",
            file=sys.stderr,
        )
        return 1
    except (OSError, ValueError) as exc:
        print(f"edge-agent is not reachable at {path}: {exc}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"edge-agent: {reply.get('error') or 'the request failed'}", file=sys.stderr)
        return 1
    if getattr(args, "json", False) or show is None:
        print(json.dumps(reply, indent=2))
    else:
        show(reply)
    return 0


def _status(args: argparse.Namespace) -> int:
    return _control(args, {"cmd": "status"}, _show_status)


def _show_status(reply: dict[str, Any]) -> None:
    session = reply.get("session") or {}
    lines = [f"state:     {reply.get('state')}{' (muted)' if reply.get('muted') else ''}"]
    if session:
        extra = f", {session['reconnects']} reconnects" if session.get("reconnects") else ""
        lines.append(f"session:   {session.get('state')}{extra}")
    if "volume_percent" in reply:
        lines.append(f"volume:    {reply['volume_percent']}%")
    timers = reply.get("timers") or {}
    ringing = timers.get("ringing") or []
    running = [f"{t['name']} ({t.get('remaining', '?')} left)" for t in timers.get("running", [])]
    if ringing:
        lines.append(f"ringing:   {', '.join(ringing)}")
    lines.append(f"timers:    {', '.join(running) if running else 'none'}")
    if "uptime_s" in reply:
        lines.append(f"uptime:    {_duration(int(reply['uptime_s']))}")
    error = session.get("last_error") or reply.get("last_error")
    if session.get("offline"):  # "offline: WHY; retrying in N s"
        lines.append(session["offline"])
    elif error:
        lines.append(f"last error: {error}")
    print("\n".join(lines))


def _duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def _button(args: argparse.Namespace) -> int:
    return _control(args, {"cmd": "button", "action": args.action}, lambda _r: None)


def _trigger(args: argparse.Namespace) -> int:
    return _control(args, {"cmd": "trigger"}, lambda r: print(f"listening ({r['state']})"))


def _stop(args: argparse.Namespace) -> int:
    return _control(args, {"cmd": "stop"}, lambda r: print(f"stopped the {r['stopped']}"))


def _mute(args: argparse.Namespace) -> int:
    cmd = args.command
    return _control(args, {"cmd": cmd}, lambda r: print("muted" if r["muted"] else "unmuted"))


def _volume(args: argparse.Namespace) -> int:
    return _control(
        args, {"cmd": "volume", "percent": args.percent}, lambda r: print(f"{r['percent']}%")
    )


def _timers(args: argparse.Namespace) -> int:
    def show(reply: dict[str, Any]) -> None:
        rows = [
            f"{t['name']}: rings at {t['rings_at']}, {t.get('remaining', '?')} left"
            for t in reply.get("running", [])
        ]
        rows += [f"{t['name']}: RINGING" for t in reply.get("ringing", [])]
        rows += [f"{t['name']}: ended while the device was off" for t in reply.get("missed", [])]
        print("\n".join(rows) if rows else "no timers")

    return _control(args, {"cmd": "timers"}, show)


def _say(args: argparse.Namespace) -> int:
    text = " ".join(args.text)

    def show(reply: dict[str, Any]) -> None:
        print("queued behind the current reply" if reply.get("queued") else "sent")

    return _control(args, {"cmd": args.command, "text": text}, show)


def _history(args: argparse.Namespace) -> int:
    from edge_agent.abilities.history import format_entry

    def show(reply: dict[str, Any]) -> None:
        entries = reply.get("entries") or []
        print("\n".join(format_entry(e) for e in entries) if entries else "no history yet")

    return _control(args, {"cmd": "history", "n": args.n}, show)


def _version(args: argparse.Namespace) -> int:
    print(f"edge-agent {__version__}")
    return 0


def _run(args: argparse.Namespace) -> int:
    import logging
    import os

    from edge_agent.app.daemon import run_daemon

    code = run_daemon(args.config)
    # Everything is stopped and flushed by now; skip the interpreter's teardown (freeing
    # the models and joining library threads takes seconds on a busy Pi), so SIGTERM to
    # exit stays inside the 2 s systemd is promised.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the voice appliance (the systemd service)")
    run.add_argument("--config", default=DEFAULT_CONFIG, help=f"default: {DEFAULT_CONFIG}")
    run.set_defaults(func=_run)

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("path", nargs="?", default=DEFAULT_CONFIG)
    check.set_defaults(func=_check_config)

    probe = sub.add_parser(
        "probe",
        help="try one Live session step by step (exit 0 ok, 2 config, 3 network, 4 TLS, "
        "5 key, 6 model, 7 setup, 8 no answer)",
    )
    probe.add_argument("--config", default=DEFAULT_CONFIG, help=f"default: {DEFAULT_CONFIG}")
    probe.set_defaults(func=_probe)

    devices = sub.add_parser("devices", help="list audio devices by ALSA name")
    devices.set_defaults(func=_devices)

    def control(name: str, help_text: str, func: Callable[[argparse.Namespace], int]) -> Any:
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--config", default=DEFAULT_CONFIG, help=f"default: {DEFAULT_CONFIG}")
        command.add_argument("--json", action="store_true", help="print the answer as JSON")
        command.set_defaults(func=func)
        return command

    control("status", "show the running daemon's state", _status)
    control("trigger", "start listening, as if the wake word was heard", _trigger)
    control("stop", "stop a ringing timer, or end the conversation", _stop)
    control("mute", "mute the microphone", _mute)
    control("unmute", "unmute the microphone", _mute)
    volume = control("volume", "show or set the speaker volume (0-100)", _volume)
    volume.add_argument("percent", nargs="?", type=int, default=None)
    control("timers", "list the timers", _timers)
    say = control("say", "send text to Gemini as if you had said it; the reply is spoken", _say)
    say.add_argument("text", nargs="+")
    announce = control("announce", "play a chime and speak this text on the device", _say)
    announce.add_argument("text", nargs="+")
    history = control("history", "print the last utterances ([history] enabled)", _history)
    history.add_argument("-n", type=int, default=20, help="how many (default 20)")
    button = control("button", "press the button of the running daemon", _button)
    button.add_argument("action", choices=("press", "hold"))

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

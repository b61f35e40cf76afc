"""Command line: `edge-agent run | check-config | probe | devices | status | button | version`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edge_agent import __version__
from edge_agent.app.checks import model_problems
from edge_agent.config import ConfigError, load_config
from edge_agent.secrets import redact

DEFAULT_CONFIG = "/etc/edge-agent/config.toml"


def _check_config(args: argparse.Namespace) -> int:
    try:
        problems = model_problems(load_config(args.path))
    except ConfigError as exc:
        problems = exc.problems
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


def _control(args: argparse.Namespace, request: dict[str, str]) -> int:
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
    except OSError as exc:
        print(f"edge-agent is not reachable at {path}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(reply, indent=2))
    return 0 if reply.get("ok") else 1


def _status(args: argparse.Namespace) -> int:
    return _control(args, {"cmd": "status"})


def _button(args: argparse.Namespace) -> int:
    return _control(args, {"cmd": "button", "action": args.action})


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

    status = sub.add_parser("status", help="show the running daemon's state (JSON)")
    status.add_argument("--config", default=DEFAULT_CONFIG, help=f"default: {DEFAULT_CONFIG}")
    status.set_defaults(func=_status)

    button = sub.add_parser("button", help="press the button of the running daemon")
    button.add_argument("action", choices=("press", "hold"))
    button.add_argument("--config", default=DEFAULT_CONFIG, help=f"default: {DEFAULT_CONFIG}")
    button.set_defaults(func=_button)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

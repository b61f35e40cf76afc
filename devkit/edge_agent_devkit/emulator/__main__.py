"""Run the Live API emulator standalone.

    python -m edge_agent_devkit.emulator --port 0 --ca-out DIR


Prints one JSON line `{"base_url": ..., "ca_pem": ..., "port": ..., "pid": ...}` once
listening, serves until SIGTERM/SIGINT, and with `--record-out FILE` writes the record as
JSON on the way out. Used by subprocess tests and the offline demo.

With `--control-stdin`, commands arrive one per line on stdin while it serves (a test
changes the service in the middle of a device's life):
    retire MODEL                  the next setup naming MODEL is refused (1008)
    fault KIND[:key=value,...]    inject a fault into every open connection now
    forget-handles                every handle issued so far is refused (1007) from now on
    stats                         print counters: connections, sessions, compressions, ...
Each command is acknowledged on stderr with a line starting `control: `.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .emulator import EmulatorOptions, LiveEmulator
from .faults import FaultSpec, parse_fault_arg

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edge_agent_devkit.emulator", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    p.add_argument("--ca-out", type=Path, default=None, help="directory for the CA PEM")
    p.add_argument("--api-key", action="append", default=None, help="accepted key (repeatable)")
    p.add_argument("--pace", type=float, default=1.0, help="1.0 real time, 0 = unpaced")
    p.add_argument("--reply-chunk-ms", type=int, default=40)
    p.add_argument("--setup-delay", type=float, default=0.0, help="seconds before setupComplete")
    p.add_argument("--message-delay", type=float, default=0.0, help="seconds per server message")
    p.add_argument("--message-jitter", type=float, default=0.0, help="+- seconds per message")
    p.add_argument("--handle-ttl", type=float, default=7200.0)
    p.add_argument(
        "--go-away-after", type=float, default=None, help="goAway this long after setupComplete"
    )
    p.add_argument(
        "--turn-context-tokens", type=int, default=0, help="extra context tokens per turn"
    )
    p.add_argument("--go-away-time-left", type=float, default=50.0, help="goAway's timeLeft")
    p.add_argument(
        "--session-limit",
        type=float,
        default=900.0,
        help="seconds an audio session without context compression lives (0 = no limit)",
    )
    p.add_argument("--reply-text", default=None, help="fixed reply sentence")
    p.add_argument("--no-espeak", action="store_true", help="reply with a tone, not speech")
    p.add_argument("--voice", default="en-us")
    p.add_argument("--speech-wpm", type=int, default=175, help="espeak-ng words per minute")
    p.add_argument("--tool", action="append", default=None, help="function the model may call")
    p.add_argument("--force-tool-call", action="store_true")
    p.add_argument(
        "--tool-args",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help='arguments of a call to NAME, e.g. set_timer={"seconds": 3} (repeatable)',
    )
    p.add_argument(
        "--tool-turn",
        action="append",
        type=int,
        default=[],
        metavar="N",
        help="only turn N of a session (0 = first) may call a tool (repeatable)",
    )
    p.add_argument("--cancel-tool-calls", action="store_true")
    p.add_argument("--vad-silence-ms", type=int, default=500)
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="CONN:KIND[:k=v,...]",
        help="scripted fault, e.g. 0:go_away:time_left_s=2,at_s=5 or 1:close_1011",
    )
    p.add_argument("--record-out", type=Path, default=None, help="write the record here on exit")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--retire", action="append", default=[], metavar="MODEL", help="refuse MODEL (1008)"
    )
    p.add_argument(
        "--not-addressed-below-ms",
        type=int,
        default=0,
        help="proactive audio: ignore audio turns with less speech than this",
    )
    p.add_argument("--not-addressed-marker", default=None, help="proactive audio: ignore text")
    p.add_argument("--control-stdin", action="store_true", help="read commands from stdin")
    p.add_argument("--log-level", default="WARNING")
    return p


def options_from_args(args: argparse.Namespace) -> EmulatorOptions:
    tool_args: dict[str, dict[str, Any]] = {}
    for text in args.tool_args:
        name, sep, raw = text.partition("=")
        value = json.loads(raw) if sep else None
        if not name or not isinstance(value, dict):
            raise ValueError(f"--tool-args wants NAME=JSON-object, got {text!r}")
        tool_args[name] = value
    faults: dict[int, list[FaultSpec]] = {}
    for text in args.fault:
        conn, spec = parse_fault_arg(text)
        faults.setdefault(conn, []).append(spec)
    return EmulatorOptions(
        valid_api_keys=tuple(args.api_key or ("test-key",)),
        pace=args.pace,
        reply_chunk_ms=args.reply_chunk_ms,
        setup_delay_s=args.setup_delay,
        message_delay_s=args.message_delay,
        message_jitter_s=args.message_jitter,
        handle_ttl_s=args.handle_ttl,
        tools=tuple(args.tool or ()),
        connection_faults=faults,
        espeak=not args.no_espeak,
        host=args.host,
        port=args.port,
        ca_dir=args.ca_out,
        reply_text=args.reply_text,
        voice=args.voice,
        speech_wpm=args.speech_wpm,
        force_tool_call=args.force_tool_call,
        tool_args=tool_args,
        tool_turns=tuple(args.tool_turn),
        cancel_tool_calls=args.cancel_tool_calls,
        vad_silence_ms=args.vad_silence_ms,
        seed=args.seed,
        retired_models=tuple(args.retire),
        not_addressed_below_ms=args.not_addressed_below_ms,
        not_addressed_marker=args.not_addressed_marker,
        go_away_after_s=args.go_away_after,
        go_away_time_left_s=args.go_away_time_left,
        session_limit_s=args.session_limit or None,
        turn_context_tokens=args.turn_context_tokens,
    )


def run_command(emulator: LiveEmulator, line: str) -> str:
    """One control command (see the module docstring) -> the acknowledgement."""
    verb, _, rest = line.strip().partition(" ")
    rest = rest.strip()
    if verb == "retire" and rest:
        emulator.retire_model(rest)
        return f"control: retired {rest}"
    if verb == "fault" and rest:
        try:
            _, spec = parse_fault_arg(f"0:{rest}")
        except ValueError as exc:
            return f"control: error: {exc}"
        emulator.inject(spec)
        return f"control: injected {spec.kind}"
    if verb == "forget-handles":
        return f"control: forgot {emulator.forget_handles()} handles"
    if verb == "stats":
        return f"control: stats {json.dumps(emulator.stats())}"
    return f"control: error: unknown command {line.strip()!r}"


async def _read_commands(emulator: LiveEmulator) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        ack = run_command(emulator, line.decode("utf-8", errors="replace"))
        sys.stderr.write(ack + "\n")
        sys.stderr.flush()


async def serve_until_signalled(
    options: EmulatorOptions, record_out: Path | None, control_stdin: bool = False
) -> None:
    emulator = LiveEmulator(options)
    await emulator.start()
    control = None
    if control_stdin:
        control = asyncio.get_running_loop().create_task(_read_commands(emulator))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    line = {
        "base_url": emulator.base_url,
        "ca_pem": str(emulator.ca_pem_path),
        "port": emulator.port,
        "pid": os.getpid(),
    }
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        if control is not None:
            control.cancel()
        await emulator.stop()
        if record_out is not None:
            tmp = record_out.with_name(record_out.name + ".tmp")
            tmp.write_text(json.dumps(emulator.record.to_dict()))
            os.replace(tmp, record_out)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        options = options_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_until_signalled(options, args.record_out, args.control_stdin))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Logging: the journal under systemd, stderr otherwise; secrets redacted on every path."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping
from types import TracebackType

from edge_agent.secrets import redact

FORMAT_STDERR = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
FORMAT_JOURNAL = "%(name)s: %(message)s"


_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class RedactingFilter(logging.Filter):
    """Rewrites each record before any handler sees it: message, args, traceback, extras.

    Needed besides the formatter because the journal handler sends more than the
    formatted text: CODE_ARGS (the raw args), EXCEPTION_TEXT and every record attribute
    become journal fields. After this filter the record holds only redacted text.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception as exc:  # a bad format string must not lose the line
            text = f"{record.msg!r} (unformattable log arguments: {type(exc).__name__})"
        record.msg, record.args = redact(text), ()
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, name, redact(value))
        return True


class RedactingFormatter(logging.Formatter):
    """Formats as usual, then masks secrets in the whole text (message, args, traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def under_systemd(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get("INVOCATION_ID") or env.get("JOURNAL_STREAM"))


def make_handler(target: str = "auto", environ: Mapping[str, str] | None = None) -> logging.Handler:
    """A handler for the journal (target journal, or auto under systemd) or for stderr."""
    if target == "journal" or (target == "auto" and under_systemd(environ)):
        try:
            from systemd.journal import JournalHandler

            handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER="edge-agent")
            handler.setFormatter(RedactingFormatter(FORMAT_JOURNAL))
            handler.addFilter(RedactingFilter())
            return handler
        except ImportError:  # pragma: no cover - systemd-python is a dependency
            pass
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(FORMAT_STDERR))
    handler.addFilter(RedactingFilter())
    return handler


def setup_logging(level: str = "INFO", target: str = "auto") -> None:
    """Install one redacting handler on the root logger (idempotent: replaces ours)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_edge_agent", False):
            root.removeHandler(old)
            old.close()
    handler = make_handler(target)
    handler._edge_agent = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    route_uncaught_exceptions()
    # A failing handler must not print the record's raw arguments to stderr (the journal).
    logging.raiseExceptions = False
    # Chatty libraries stay at WARNING unless we debug them on purpose.
    # httpx logs every MCP request at INFO: one line per tool call is noise in the journal.
    logging.getLogger("httpx").setLevel(max(logging.getLevelName(level), logging.WARNING))
    for name in ("websockets", "httpcore", "google_genai", "asyncio"):
        logging.getLogger(name).setLevel(max(logging.getLevelName(level), logging.INFO))


_crash_log = logging.getLogger("edge_agent.crash")


def _log_uncaught(
    exc_type: type[BaseException],
    exc: BaseException | None,
    tb: TracebackType | None,
    where: str,
) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        return
    _crash_log.critical("uncaught exception %s", where, exc_info=(exc_type, exc, tb))


def _thread_hook(args: threading.ExceptHookArgs) -> None:
    name = args.thread.name if args.thread is not None else "?"
    _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback, f"in thread {name}")


def _unraisable_hook(unraisable: sys.UnraisableHookArgs) -> None:
    try:
        where = f"{unraisable.err_msg or 'Exception ignored in'}: {unraisable.object!r}"
    except Exception:  # a broken __repr__ must not hide the traceback
        where = "Exception ignored"
    _log_uncaught(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback, f"({where})")


def route_uncaught_exceptions() -> None:
    """Crash output goes through the redacting handler too: Python prints an uncaught
    exception's traceback (main thread, other threads, ``__del__``) straight to stderr,
    which under systemd is the journal, and an exception's text may quote the key."""
    sys.excepthook = lambda t, e, tb: _log_uncaught(t, e, tb, "in the main thread")
    threading.excepthook = _thread_hook
    sys.unraisablehook = _unraisable_hook

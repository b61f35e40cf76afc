"""Fault specifications for the Live API emulator.

A FaultSpec says *what* goes wrong and *when*. The daemon's recovery paths (goAway
handover, 1011 mid-reply, dead TCP, keepalive timeouts, garbage frames) are only
testable if the emulator can produce each of them on demand, on a chosen connection.

When a fault fires:
- `at_s`: seconds after setupComplete was sent (for `inject`: seconds from now);
- `after_messages`: once the connection has received N client messages (setup counts;
  for `inject`: N more messages from now);
- neither: `close_1011`, `drop_tcp` and `vanish` given in `connection_faults` fire mid-reply
  (after `after_chunks` audio chunks of the next reply, default 2); every other kind fires at once
  (`go_away`, `bad_frame`, `unknown_message` right after setupComplete; `delay`,
  `no_pong`, `late_pong` from the first byte). `inject` without timing fires at once.
- Connection-level kinds (`never_setup`, `bad_key`, `missing_key`, `http_status`) only make
  sense in `connection_faults` and ignore timing.

`raw_frame` sends `data` exactly as given (str or bytes), as a text frame if `text` is true
(bytes need not be UTF-8 then) or else a binary one: the fuzz tests' way to send any frame.

`cancel_tool_calls` is the service cancelling every function call it issued that has not
been answered yet (toolCallCancellation), as it does when it no longer needs them.

`vanish` is the client disappearing without a close (a Wi-Fi roam): the TCP connection is
dropped, but the server does not notice for `hold_s` seconds and keeps the session
attached to the dead connection, so resuming it gets 1011 until then.
"""

from __future__ import annotations

from typing import Any

# One-shot actions.
GO_AWAY = "go_away"
CLOSE_1011 = "close_1011"
DROP_TCP = "drop_tcp"
VANISH = "vanish"
BAD_FRAME = "bad_frame"
UNKNOWN_MESSAGE = "unknown_message"
RAW_FRAME = "raw_frame"
CANCEL_TOOL_CALLS = "cancel_tool_calls"
# Behaviours that hold from the moment they fire.
NO_PONG = "no_pong"
LATE_PONG = "late_pong"
DELAY = "delay"
# Connection-level behaviours.
NEVER_SETUP = "never_setup"
BAD_KEY = "bad_key"
MISSING_KEY = "missing_key"
HTTP_STATUS = "http_status"

ACTION_KINDS = frozenset(
    {
        GO_AWAY,
        CLOSE_1011,
        DROP_TCP,
        VANISH,
        BAD_FRAME,
        UNKNOWN_MESSAGE,
        RAW_FRAME,
        CANCEL_TOOL_CALLS,
    }
)
BEHAVIOUR_KINDS = frozenset({NO_PONG, LATE_PONG, DELAY})
CONNECTION_KINDS = frozenset({NEVER_SETUP, BAD_KEY, MISSING_KEY, HTTP_STATUS})
ALL_KINDS = ACTION_KINDS | BEHAVIOUR_KINDS | CONNECTION_KINDS
# Kinds that default to "mid-reply" when listed in connection_faults without timing.
MID_REPLY_DEFAULT_KINDS = frozenset({CLOSE_1011, DROP_TCP, VANISH})

# Parameters each kind understands (and their defaults).
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    GO_AWAY: {"time_left_s": 50.0},
    CLOSE_1011: {"reason": "Internal error encountered.", "after_chunks": 2},
    DROP_TCP: {"after_chunks": 2},
    VANISH: {"after_chunks": 2, "hold_s": 3600.0},
    BAD_FRAME: {"data": None},
    UNKNOWN_MESSAGE: {},
    RAW_FRAME: {"data": b"", "text": False},
    CANCEL_TOOL_CALLS: {},
    NO_PONG: {},
    LATE_PONG: {"delay_s": 25.0},
    DELAY: {"delay_s": 0.0, "jitter_s": 0.0},
    NEVER_SETUP: {},
    BAD_KEY: {},
    MISSING_KEY: {},
    HTTP_STATUS: {"status": 503},
}
_COMMON_PARAMS = frozenset({"mid_reply", "after_chunks"})


class FaultSpec:
    """What goes wrong, and when: `FaultSpec(kind, at_s=None, after_messages=None, **params)`.

    Extra params: `mid_reply=True` makes any action kind wait for the next reply's
    `after_chunks`-th audio chunk (the default for close_1011/drop_tcp in connection_faults).
    """

    __slots__ = ("after_messages", "at_s", "kind", "params")

    def __init__(
        self,
        kind: str,
        at_s: float | None = None,
        after_messages: int | None = None,
        **params: Any,
    ) -> None:
        if kind not in ALL_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(ALL_KINDS)}")
        allowed = set(DEFAULT_PARAMS[kind]) | _COMMON_PARAMS
        unknown = set(params) - allowed
        if unknown:
            raise ValueError(f"fault {kind!r} does not take {sorted(unknown)}")
        if at_s is not None and at_s < 0:
            raise ValueError("at_s must be >= 0")
        if after_messages is not None and after_messages < 0:
            raise ValueError("after_messages must be >= 0")
        self.kind = kind
        self.at_s = None if at_s is None else float(at_s)
        self.after_messages = after_messages
        self.params: dict[str, Any] = {**DEFAULT_PARAMS[kind], **params}

    def param(self, name: str) -> Any:
        return self.params.get(name)

    def is_timed(self) -> bool:
        return self.at_s is not None or self.after_messages is not None

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return (
            f"FaultSpec({self.kind!r}, at_s={self.at_s!r}, "
            f"after_messages={self.after_messages!r}{extra})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FaultSpec):
            return NotImplemented
        return (self.kind, self.at_s, self.after_messages, self.params) == (
            other.kind,
            other.at_s,
            other.after_messages,
            other.params,
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.at_s, self.after_messages))


def parse_fault_arg(text: str) -> tuple[int, FaultSpec]:
    """Parse the CLI form `CONN:KIND[:key=value,...]`, e.g. `0:go_away:time_left_s=2,at_s=5`."""
    parts = text.split(":", 2)
    if len(parts) < 2:
        raise ValueError(f"fault {text!r}: expected CONN:KIND[:key=value,...]")
    try:
        conn = int(parts[0])
    except ValueError as exc:
        raise ValueError(f"fault {text!r}: connection index must be an integer") from exc
    kind = parts[1]
    kwargs: dict[str, Any] = {}
    if len(parts) == 3 and parts[2]:
        for item in parts[2].split(","):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"fault {text!r}: expected key=value, got {item!r}")
            kwargs[key.strip()] = _parse_value(value.strip())
    at_s = kwargs.pop("at_s", None)
    after_messages = kwargs.pop("after_messages", None)
    return conn, FaultSpec(
        kind,
        at_s=None if at_s is None else float(at_s),
        after_messages=None if after_messages is None else int(after_messages),
        **kwargs,
    )


def _parse_value(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value

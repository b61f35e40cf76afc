"""What ended a Live connection, as plain data, mapped onto ``core.backoff.Failure``.

Pure: no I/O, no SDK. The adapter (``live.session``) keeps the ``isinstance`` checks on
google-genai and websockets exception types and hands over what it caught as a
``Caught`` kind plus a close code or HTTP status and a reason; the rules live here.

What google-genai 3.x raises, and where (reproduced against the emulator):
- ``connect()`` and ``receive()`` raise ``errors.APIError`` carrying the websocket close
  code (``Caught.API_ERROR``); a keepalive timeout shows as APIError 1006. An APIError
  whose code is not a close code is an error *message* from the server: during
  ``receive()`` it costs that message only (see ``receive_error_ends_connection``).
- ``send_*`` raise websockets ``ConnectionClosed*`` (``Caught.CLOSED``); without a close
  frame from the server that is 1006.
- A refused websocket upgrade raises ``websockets.InvalidStatus`` (``Caught.HTTP_REFUSED``).
- OSError (refused, unreachable, reset, TLS, opening handshake timeout), other websockets
  errors and an unparsable first server frame (ValueError/TypeError) are
  ``Caught.TRANSPORT``.
- ``connect()`` has no timeout for setupComplete: the adapter adds one
  (``Caught.SETUP_TIMEOUT``).
- A keepalive timeout: websockets got no pong within ``ping_timeout``, so it sent a close
  frame 1011 "keepalive ping timeout" and dropped the connection without waiting for the
  server's. The SDK reports only the frame it *received* (none: 1006 "abnormal closure
  [internal]"); the ``ConnectionClosed`` it raised from still carries the frame that was
  *sent*, and ``is_keepalive_timeout`` reads it (``Caught.KEEPALIVE_TIMEOUT``). It is a
  network failure: the server, or the path to it, went silent.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from edge_agent.core.backoff import CLOSE_ABNORMAL, Failure, FailureKind

NO_CLOSE_FRAME_REASON = "connection closed without a close frame"
DEFAULT_LIVE_ENDPOINT = "generativelanguage.googleapis.com"
# What websockets (14 to 17) sends when a ping goes unanswered for ping_timeout.
KEEPALIVE_CLOSE_CODE = 1011
KEEPALIVE_CLOSE_REASON = "keepalive ping timeout"


class Caught(StrEnum):
    """What the adapter caught, named by meaning rather than by exception class."""

    NO_KEY = "no_key"  # the key provider has no key
    CLIENT_SETUP = "client_setup"  # the SDK client could not be built (CA file, TLS context)
    SETUP_TIMEOUT = "setup_timeout"  # connected, no setupComplete within setup_timeout_s
    NO_SETUP_COMPLETE = "no_setup_complete"  # the first server message was something else
    API_ERROR = "api_error"  # google-genai errors.APIError (code: close code, if any)
    CLOSED = "closed"  # websockets ConnectionClosed (code None: no close frame received)
    HTTP_REFUSED = "http_refused"  # websockets InvalidStatus (code: the HTTP status)
    TRANSPORT = "transport"  # OSError, other websockets errors, unparsable first frame
    UNREADABLE = "unreadable"  # receive() could not parse one server frame (Value/TypeError)
    BAD_FRAMES = "bad_frames"  # too many unreadable server messages in a row
    INTERNAL = "internal"  # a bug of ours ended the connection task
    KEEPALIVE_TIMEOUT = "keepalive_timeout"  # no pong within ping_timeout (we closed)


@dataclass(frozen=True)
class ConnectionFacts:
    """Per-connection facts the classifier needs (see ``core.backoff.Failure``)."""

    resuming: bool = False  # this connection's setup offered a resumption handle
    setup_done: bool = False  # setupComplete arrived
    after_go_away: bool = False  # the server announced goAway on this connection


def is_close_code(code: object) -> bool:
    """A websocket close code, as opposed to an HTTP status or an SDK error number."""
    return isinstance(code, int) and not isinstance(code, bool) and 1000 <= code <= 4999


def is_keepalive_timeout(
    received_close: bool, sent_code: int | None, sent_reason: str | None
) -> bool:
    """The websocket ended because our keepalive ping went unanswered: websockets sent its
    own 1011 "keepalive ping timeout" and no close frame came back."""
    return (
        not received_close
        and sent_code == KEEPALIVE_CLOSE_CODE
        and sent_reason == KEEPALIVE_CLOSE_REASON
    )


def keepalive_timeout_reason(ping_timeout_s: float) -> str:
    """The log's words for a keepalive timeout."""
    return f"the server stopped answering keepalive pings (no pong within {ping_timeout_s:g} s)"


def receive_error_ends_connection(code: int | None) -> bool:
    """An APIError out of ``receive()`` ends the connection only if it carries a close code;
    otherwise it is one error message from the server, skipped like a bad frame."""
    return is_close_code(code)


def classify_caught(
    caught: Caught, facts: ConnectionFacts, code: int | None = None, reason: str = ""
) -> Failure:
    """The ``Failure`` the reconnect policy decides on, for what the adapter caught."""
    kind = _KIND[caught]
    if caught is Caught.API_ERROR:
        kind = FailureKind.CLOSED if is_close_code(code) else FailureKind.NETWORK
    elif caught is Caught.CLOSED and code is None:
        code, reason = CLOSE_ABNORMAL, NO_CLOSE_FRAME_REASON
    elif caught is Caught.HTTP_REFUSED:
        reason = reason or "websocket upgrade refused"
    elif caught is Caught.NO_SETUP_COMPLETE:
        reason = reason or "first server message was not setupComplete"
    return Failure(
        kind,
        code if caught in _WITH_CODE else None,
        reason,
        during_setup=not facts.setup_done,
        resuming=facts.resuming,
        after_go_away=facts.after_go_away,
    )


_KIND = {
    Caught.NO_KEY: FailureKind.NO_KEY,
    Caught.CLIENT_SETUP: FailureKind.NETWORK,
    Caught.SETUP_TIMEOUT: FailureKind.SETUP_TIMEOUT,
    Caught.NO_SETUP_COMPLETE: FailureKind.PROTOCOL,
    Caught.API_ERROR: FailureKind.CLOSED,
    Caught.CLOSED: FailureKind.CLOSED,
    Caught.HTTP_REFUSED: FailureKind.HTTP,
    Caught.TRANSPORT: FailureKind.NETWORK,
    Caught.UNREADABLE: FailureKind.PROTOCOL,
    Caught.BAD_FRAMES: FailureKind.PROTOCOL,
    Caught.INTERNAL: FailureKind.PROTOCOL,
    Caught.KEEPALIVE_TIMEOUT: FailureKind.NETWORK,
}
_WITH_CODE = frozenset({Caught.API_ERROR, Caught.CLOSED, Caught.HTTP_REFUSED})


# ---- plain words for a connection that could not be opened ------------------------------
# What a person reads in the log and in STATUS= while the device is offline: what failed,
# where, and in words an owner can act on (check the network, the clock, the CA file).

# OpenSSL X509_V_ERR_* codes carried by ssl.SSLCertVerificationError.verify_code.
_CERT_EXPIRED = 10
_CERT_NOT_YET_VALID = 9
_HOSTNAME_MISMATCH = 62


def endpoint_of(base_url: str) -> str:
    """``host[:port]`` of the Live API endpoint (the Google host when no base_url is set)."""
    parts = urlsplit(base_url) if base_url else None
    host = (parts.hostname if parts else None) or DEFAULT_LIVE_ENDPOINT
    port = parts.port if parts else None
    return f"{host}:{port}" if port else host


def describe_transport_error(exc: BaseException, endpoint: str) -> str:
    """One plain line for an error out of the opening handshake (TCP, TLS, upgrade)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code == _CERT_EXPIRED:
            return f"the TLS certificate of {endpoint} has expired"
        if code == _CERT_NOT_YET_VALID:
            return f"the TLS certificate of {endpoint} is not valid yet (is the clock right?)"
        if code == _HOSTNAME_MISMATCH:
            return f"the TLS certificate of {endpoint} is for another name"
        why = exc.verify_message or "verification failed"
        return f"the TLS certificate of {endpoint} is not trusted ({why})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {endpoint} failed ({exc.reason or exc})"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the name of the Live API host {endpoint} ({exc.strerror or exc})"
    if isinstance(exc, ConnectionRefusedError):
        return f"cannot reach the Live API at {endpoint} (connection refused)"
    if isinstance(exc, TimeoutError):
        return f"the Live API at {endpoint} did not answer in time ({exc or 'timed out'})"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot reach the Live API at {endpoint} ({exc.strerror.lower()})"
    return f"connection to {endpoint} failed: {exc.__class__.__name__}: {exc}"


def describe_setup_timeout(endpoint: str, timeout_s: float) -> str:
    """The connect timeout covers TCP, TLS, the WebSocket upgrade and setupComplete: the
    adapter cannot tell which step hung, so the words name all of them."""
    return (
        f"no answer from the Live API at {endpoint} within {timeout_s:g} s "
        "(TLS, WebSocket upgrade or setupComplete never came)"
    )

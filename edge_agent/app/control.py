"""Control socket: a local AF_UNIX socket of JSON lines for status and a virtual button.

`edge-agent status` and `edge-agent button press` use it over SSH; the demo and the
end-to-end tests use it to press the (mock) GPIO button inside the running daemon.
One request line in, one response line out. A misbehaving client cannot hold the daemon:

- a request line is at most ``MAX_REQUEST_BYTES`` before its newline (a longer one is
  answered with an error and the connection closed); it must be complete within
  ``CLIENT_TIMEOUT_S`` of the connection (a client that sends nothing, or a byte a second,
  is answered with an error and closed), and the answer must be taken within
  ``CLIENT_TIMEOUT_S`` too;
- at most ``MAX_CLIENTS`` connections are served at once (file descriptors are a budget
  the Live session and the sound card share). When that many are open, a new connection
  takes the place of the oldest one still waiting for its request line after
  ``EVICTABLE_AFTER_S``, which is told so (a flood of idle connections cannot lock a
  well-behaved client out: its own line arrives within milliseconds); if none is that
  old, the newcomer is answered ``busy`` and closed at once (``control_request``, the
  CLI's client, retries);
- a request that is not a JSON object, or that the handler fails on, gets an error answer;
  a handler bug is logged with its traceback and costs that request only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4096
CLIENT_TIMEOUT_S = 5.0
MAX_CLIENTS = 32
EVICTABLE_AFTER_S = 0.25

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass
class _Client:
    writer: asyncio.StreamWriter
    since: float  # loop time it was admitted
    waiting: bool = True  # no complete request line yet
    evicted: bool = False


class ControlServer:
    """Serves JSON-line requests on a Unix socket; `handler` answers each request."""

    def __init__(
        self,
        path: Path,
        handler: Handler,
        *,
        client_timeout_s: float = CLIENT_TIMEOUT_S,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.path = path
        self._handler = handler
        self.client_timeout_s = client_timeout_s
        self.max_clients = max_clients
        self._server: asyncio.AbstractServer | None = None
        self._clients: list[_Client] = []  # in order of arrival
        self.refused = 0  # connections answered "busy"
        self.evicted = 0  # idle connections closed to make room

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=MAX_REQUEST_BYTES
        )
        os.chmod(self.path, 0o660)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for client in list(self._clients):
                client.writer.transport.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    @property
    def clients(self) -> int:
        return len(self._clients)

    def _admit(self, writer: asyncio.StreamWriter, now: float) -> _Client | None:
        """A place for a new connection, or None: too many busy ones (see module doc)."""
        if len(self._clients) >= self.max_clients:
            oldest = next((c for c in self._clients if c.waiting), None)
            if oldest is None or now - oldest.since < EVICTABLE_AFTER_S:
                return None
            oldest.evicted = True
            self._clients.remove(oldest)
            self.evicted += 1
            evicted = _error(
                f"closed to make room: no complete request line after {now - oldest.since:.1f} s "
                f"while {self.max_clients} clients were connected"
            )
            oldest.writer.write(json.dumps(evicted).encode() + b"\n")
            oldest.writer.transport.close()  # after that line; its reader sees the end
            if self.evicted == 1:
                log.warning(
                    "control socket: more than %d clients at once; closing the idle ones",
                    self.max_clients,
                )
        client = _Client(writer, now)
        self._clients.append(client)
        return client

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = self._admit(writer, asyncio.get_running_loop().time())
        try:
            if client is None:
                self.refused += 1
                busy = f"busy: {self.max_clients} control clients are connected; try again"
                await self._answer(writer, {"ok": False, "error": busy})
                return
            response = await self._request(reader, client)
            if response is not None:
                await self._answer(writer, response)
        except (TimeoutError, ConnectionError) as exc:
            log.debug("control client dropped: %r", exc)
        finally:
            if client is not None and client in self._clients:
                self._clients.remove(client)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), self.client_timeout_s)

    async def _request(
        self, reader: asyncio.StreamReader, client: _Client
    ) -> dict[str, Any] | None:
        """Read one request line and answer it; None: the connection was evicted."""
        try:
            line = await asyncio.wait_for(reader.readline(), self.client_timeout_s)
        except TimeoutError:
            if client.evicted:
                return None
            return _error(f"no complete request line within {self.client_timeout_s:g} s")
        except ValueError:  # readline past the limit (LimitOverrunError)
            return _error(f"request longer than {MAX_REQUEST_BYTES} bytes")
        if client.evicted:
            return None  # its transport is gone: what arrived may be a partial line
        client.waiting = False
        try:
            request = json.loads(line)
        except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested too deep
            return _error(f"bad request: not a JSON line ({exc.__class__.__name__})")
        if not isinstance(request, dict):
            return _error("bad request: request must be a JSON object")
        try:
            return await self._handler(request)
        except (ValueError, KeyError, TypeError, ArithmeticError) as exc:
            return _error(f"bad request: {exc}")
        except Exception as exc:
            log.exception("control request %.40r failed", request.get("cmd"))
            return _error(f"internal error: {exc.__class__.__name__}")

    async def _answer(self, writer: asyncio.StreamWriter, response: dict[str, Any]) -> None:
        try:
            data = json.dumps(response).encode()
        except (TypeError, ValueError) as exc:  # a handler answered something not JSON
            log.error("control answer not JSON: %s", exc)
            data = json.dumps(_error("internal error: answer not JSON")).encode()
        writer.write(data + b"\n")
        await asyncio.wait_for(writer.drain(), self.client_timeout_s)


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def control_request(
    path: str | Path, request: dict[str, Any], timeout_s: float = CLIENT_TIMEOUT_S
) -> dict[str, Any]:
    """Blocking client for the CLI and tests: send one request, return the response.

    A ``busy`` answer (the request was not run) and a full listen backlog are retried
    with a short backoff until ``timeout_s``: a flood on the socket delays the CLI, it
    does not lock it out."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        try:
            answer = _request_once(path, request, timeout_s)
        except BlockingIOError:  # the listen backlog is full (EAGAIN on a Unix socket)
            if time.monotonic() + delay > deadline:
                raise
        else:
            busy = answer.get("ok") is False and str(answer.get("error")).startswith("busy:")
            if not busy or time.monotonic() + delay > deadline:
                return answer
        time.sleep(delay)
        delay = min(2 * delay, 0.5)


def _request_once(path: str | Path, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        # Answered (busy) and closed before the request went out: read that answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)

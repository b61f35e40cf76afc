"""A local Gemini Live API emulator, reachable by the real google-genai SDK over TLS.

The daemon, the offline demo, the benchmarks and the tests all need a Live API that
behaves like the real one (message shapes and order, turn taking, interruptions, tool
calls, resumption handles, close codes) and that can misbehave on demand. What it copies
of the real service is written next to the code that does it (`protocol.py` for close
codes and reasons, `models.py` for each model family's rules).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, serve
from websockets.http11 import Request, Response
from websockets.protocol import State

from . import faults as fk
from . import models as served
from . import protocol as proto
from .connection import ConnectionHandler, EmulatorServerConnection
from .faults import FaultSpec
from .models import DEFAULT_MODELS, ServedModel, SetupVerdict
from .record import DEFAULT_MAX_AUDIO_BYTES, DEFAULT_MAX_MESSAGES, ConnectionRecord, EmulatorRecord
from .sessions import DEFAULT_SESSION_LIMIT_S, SessionRegistry
from .tls import TlsMaterial, make_tls

logger = logging.getLogger(__name__)

_PATH = re.compile(
    r"^/+ws/google\.ai\.generativelanguage\.(?P<version>[A-Za-z0-9_-]+)"
    r"\.GenerativeService\.BidiGenerateContent$"
)


_MODELS_PATH = re.compile(r"^/+(?P<version>v1alpha|v1beta|v1)/models(?:/(?P<name>[^/?]+))?$")
_QUERY_KEY = re.compile(r"([?&]key=)[^&\s]*")


def redact_keys(text: str) -> str:
    """Hide API keys in a request path or a logged header line."""
    text = _QUERY_KEY.sub(r"\1<redacted>", text)
    if text.lower().lstrip("< ").startswith("x-goog-api-key:"):
        return text.split(":", 1)[0] + ": <redacted>"
    return text


class _RedactKeysFilter(logging.Filter):
    """websockets logs request lines and headers at DEBUG; keys must never reach a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG and record.msg in ("< %s: %s", "< %s %s %s"):
            message = redact_keys(record.getMessage())
            record.msg, record.args = message, ()
        return True


_WS_LOGGER = logging.getLogger(__name__ + ".websockets")
_WS_LOGGER.addFilter(_RedactKeysFilter())


@dataclass(frozen=True)
class EmulatorOptions:
    """How the emulator behaves. Contract fields first, then additions."""

    valid_api_keys: tuple[str, ...] = ("test-key",)
    pace: float = 0.0  # reply audio: 1.0 real time, 0 as fast as possible, 2.0 twice as fast
    reply_chunk_ms: int = 40
    setup_delay_s: float = 0.0
    message_delay_s: float = 0.0
    message_jitter_s: float = 0.0
    handle_ttl_s: float = 7200.0
    tools: tuple[str, ...] = ()  # functions the model may call (empty: any declared one)
    connection_faults: Mapping[int, Sequence[FaultSpec]] = field(default_factory=dict)
    espeak: bool = True
    # --- additions ---
    host: str = "127.0.0.1"
    port: int = 0
    ca_dir: str | Path | None = None  # where to write the CA PEM (default: private temp dir)
    reply_text: str | None = None  # fixed reply sentence (tool turns still report the tool)
    reply_audio_pcm: bytes | None = None  # exact 24 kHz s16le reply audio for every turn
    voice: str = "en-us"
    speech_wpm: int = 175
    tool_args: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    force_tool_call: bool = False  # call the first eligible function on every turn
    tool_turns: tuple[int, ...] = ()  # turns (index in the session) that may call; () = all
    cancel_tool_calls: bool = False  # send toolCallCancellation instead of waiting
    vad_threshold_dbfs: float = -40.0
    vad_min_speech_ms: int = 60
    vad_silence_ms: int = 500  # setup's silenceDurationMs wins when given
    first_message_timeout_s: float = 30.0
    close_timeout_s: float = 2.0
    max_message_bytes: int = 16 * 1024 * 1024
    max_recorded_messages: int = DEFAULT_MAX_MESSAGES
    max_recorded_audio_bytes: int = DEFAULT_MAX_AUDIO_BYTES
    seed: int | None = None  # jitter and call ids
    models: tuple[ServedModel, ...] = DEFAULT_MODELS  # served, listed at GET /v1beta/models
    retired_models: tuple[str, ...] = ()  # refused from the start (see retire_model)
    # Proactive audio (always on for 3.8, opt-in on 2.5): a turn the rule below says is
    # not meant for the device gets no reply, only a bare turnComplete (inferred).
    not_addressed_below_ms: int = 0  # audio turns with less speech than this
    not_addressed_marker: str | None = None  # text turns containing this text
    # Lifetimes, shortened so that hours of use pass in minutes. The service sends goAway
    # about 540 s into a connection (timeLeft 50 s) and closes with 1008 when it runs out;
    # None: no scheduled goAway (faults can still send one).
    go_away_after_s: float | None = None  # after setupComplete, on every connection
    go_away_time_left_s: float = 50.0
    # An audio-only session without contextWindowCompression ends this long after it
    # began (the service: 15 min): closed with 1011, its handles refused (1007) after.
    session_limit_s: float | None = DEFAULT_SESSION_LIMIT_S
    # Context tokens each turn adds on top of its reported usage: a soak's short turns
    # stand in for long ones, so the compression trigger is reached in minutes.
    turn_context_tokens: int = 0


class LiveEmulator:
    """The emulator: `await start()`, point the SDK at `base_url`, `await stop()`."""

    def __init__(self, options: EmulatorOptions | None = None) -> None:
        self.options = options or EmulatorOptions()
        self.record = EmulatorRecord(max_messages=self.options.max_recorded_messages)
        self._registry = SessionRegistry(
            self.record,
            handle_ttl_s=self.options.handle_ttl_s,
            max_audio_bytes=self.options.max_recorded_audio_bytes,
            session_limit_s=self.options.session_limit_s,
        )
        self._rng = random.Random(self.options.seed)
        self._server: Server | None = None
        self._tls: TlsMaterial | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handlers: dict[int, ConnectionHandler] = {}
        self._handler_tasks: set[asyncio.Task[Any]] = set()
        self._changed: asyncio.Event | None = None
        self._connection_count = 0
        self._retired = {served.bare_name(m) for m in self.options.retired_models}
        self._stopped = False
        self.port: int = 0

    # ---- lifecycle ----

    async def start(self) -> None:
        """Create TLS material and listen on host:port (port 0 = a free one)."""
        if self._server is not None:
            raise RuntimeError("emulator already started")
        if self._stopped:
            raise RuntimeError("a stopped emulator cannot be restarted; make a new one")
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._tls = await asyncio.to_thread(make_tls, self.options.ca_dir)
        self._server = await serve(
            self._handle,
            self.options.host,
            self.options.port,
            ssl=self._tls.server_context,
            process_request=self._process_request,
            create_connection=EmulatorServerConnection,
            ping_interval=None,  # the client keeps the connection alive, not us
            close_timeout=self.options.close_timeout_s,
            max_size=self.options.max_message_bytes,
            server_header=None,
            logger=_WS_LOGGER,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("Live API emulator listening on %s", self.base_url)

    async def stop(self) -> None:
        """Close every connection (1001), cancel every task, stop listening. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        server = self._server
        if server is None:
            return
        server.close(close_connections=False)  # stop accepting now
        handlers = list(self._handlers.values())
        if handlers:
            closing = [asyncio.ensure_future(h.shutdown()) for h in handlers]
            _, pending = await asyncio.wait(closing, timeout=self.options.close_timeout_s + 1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*closing, return_exceptions=True)
        for task in list(self._handler_tasks):
            task.cancel()
        for handler in handlers:
            if handler.ws.protocol.state is not State.CLOSED:
                handler.ws.transport.abort()  # still open after the close handshake timed out
        try:
            await asyncio.wait_for(server.wait_closed(), timeout=self.options.close_timeout_s + 5)
        except TimeoutError:
            logger.warning("emulator connections did not finish closing in time")
        if self._tls is not None:
            self._tls.cleanup()
        logger.info("Live API emulator stopped")

    async def __aenter__(self) -> LiveEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- what clients need ----

    @property
    def base_url(self) -> str:
        """`https://HOST:PORT` for genai HttpOptions(base_url=...); the SDK switches to wss."""
        host = self.options.host
        if ":" in host:
            host = f"[{host}]"
        return f"https://{host}:{self.port}"

    @property
    def ca_pem_path(self) -> Path:
        if self._tls is None:
            raise RuntimeError("emulator not started")
        return self._tls.ca_pem_path

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client SSLContext trusting the emulator's CA."""
        if self._tls is None:
            raise RuntimeError("emulator not started")
        return self._tls.client_context()

    @property
    def open_connections(self) -> list[int]:
        """Indexes of connections currently being served."""
        return sorted(self._handlers)

    def inject(self, spec: FaultSpec) -> None:
        """Apply `spec` now to every open connection (timing relative to now). Thread-safe."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("emulator not started")
        if _running_loop() is loop:
            self._inject_now(spec)
        else:
            loop.call_soon_threadsafe(self._inject_now, spec)

    def _inject_now(self, spec: FaultSpec) -> None:
        if not self._handlers:
            logger.warning("inject(%s): no open connection", spec.kind)
        for handler in list(self._handlers.values()):
            handler.inject(spec)

    def forget_handles(self) -> int:
        """Refuse every handle issued so far (the next resume gets 1007). Loop thread."""
        count = self._registry.forget_handles()
        logger.info("forgot %d resumption handles", count)
        return count

    def stats(self) -> dict[str, Any]:
        """Counters of a long run: connections, sessions, compressions, ended sessions,
        replies sent whole, and the faults that fired, by kind."""
        faults: dict[str, int] = {}
        for conn in self.record.connections:
            for kind in conn.faults:
                faults[kind] = faults.get(kind, 0) + 1
        return {
            "connections": self._connection_count,
            **self._registry.stats(),
            "replies_completed": sum(1 for r in self.record.replies if r.completed),
            "faults": faults,
        }

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """Wait until `predicate()` holds; re-checked on every recorded change.

        Raises TimeoutError after `timeout_s`.
        """
        if self._changed is None:
            raise RuntimeError("emulator not started")
        deadline = time.monotonic() + timeout_s
        while True:
            self._changed.clear()
            if predicate():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("emulator condition not reached in time")
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                if predicate():
                    return
                raise

    # ---- models ----

    def retire_model(self, model: str) -> None:
        """Retire ``model`` now: the next setup naming it is refused (1008, not found) and
        the models list stops showing it. Open connections keep going, as in the service."""
        self._retired.add(served.bare_name(model))
        logger.info("model %s retired", served.bare_name(model))

    @property
    def retired_models(self) -> frozenset[str]:
        return frozenset(self._retired)

    def judge_setup(self, setup: Mapping[str, Any]) -> SetupVerdict:
        """The service's answer to a setup (model served? family rules kept?)."""
        return served.setup_verdict(setup, self.options.models, frozenset(self._retired))

    def _models_response(
        self, connection: EmulatorServerConnection, request: Request, match: re.Match[str]
    ) -> Response:
        """The REST models API: list (paged) and get, authenticated like the service."""
        url = urlsplit(request.path)
        query = parse_qs(url.query)
        key = request.headers.get("x-goog-api-key") or (query.get("key") or [None])[0]
        retired = frozenset(self._retired)
        if not key:
            status, body = (
                403,
                served.error_body(403, proto.REASON_MISSING_KEY, "PERMISSION_DENIED"),
            )
        elif key not in self.options.valid_api_keys:
            status, body = 400, served.error_body(400, proto.REASON_BAD_KEY, "INVALID_ARGUMENT")
        elif match.group("name"):
            name = match.group("name")
            found = served.get_model(self.options.models, retired, name)
            if found is None:
                reason = served.not_found_reason(name, match.group("version"), "get")
                status, body = 404, served.error_body(404, reason, "NOT_FOUND")
            else:
                status, body = 200, found
        else:
            size = (query.get("pageSize") or ["0"])[0]
            token = (query.get("pageToken") or [""])[0]
            page_size = int(size) if size.isdigit() else 0
            status, body = 200, served.list_page(self.options.models, retired, page_size, token)
        response = connection.respond(status, json.dumps(body))
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json; charset=UTF-8"
        return response

    # ---- server plumbing ----

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def _process_request(
        self, connection: EmulatorServerConnection, request: Request
    ) -> Response | None:
        models_match = _MODELS_PATH.match(urlsplit(request.path).path)
        if models_match and "upgrade" not in request.headers.get("Connection", "").lower():
            return self._models_response(connection, request, models_match)
        index = self._connection_count
        self._connection_count += 1
        conn_record = ConnectionRecord(index=index, path=redact_keys(request.path))
        self.record.connections.append(conn_record)
        connection.emu_index = index
        self._notify()
        url = urlsplit(request.path)
        if not _PATH.match(url.path):
            conn_record.closed_by, conn_record.close_reason = "http", "HTTP 404"
            return connection.respond(404, "Not Found\n")
        for spec in self.options.connection_faults.get(index, ()):
            if spec.kind == fk.HTTP_STATUS:
                status = int(spec.param("status"))
                conn_record.faults.append(spec.kind)
                conn_record.closed_by, conn_record.close_reason = "http", f"HTTP {status}"
                return connection.respond(status, "Refused by emulator fault.\n")
        key = request.headers.get("x-goog-api-key")
        if not key:
            key = (parse_qs(url.query).get("key") or [None])[0]
        connection.api_key = key
        return None

    async def _handle(self, ws: EmulatorServerConnection) -> None:
        index = ws.emu_index
        conn_record = self.record.connections[index]
        task = asyncio.current_task()
        assert task is not None
        self._handler_tasks.add(task)
        handler = ConnectionHandler(
            ws,
            conn_record,
            self.options,
            self.record,
            self._registry,
            list(self.options.connection_faults.get(index, ())),
            self._notify,
            self._rng,
            self.judge_setup,
        )
        self._handlers[index] = handler
        logger.debug("connection %d opened (%s)", index, conn_record.path)
        try:
            await handler.run()
        finally:
            self._handlers.pop(index, None)
            self._handler_tasks.discard(task)
            self._notify()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


__all__ = ["EmulatorOptions", "FaultSpec", "LiveEmulator"]

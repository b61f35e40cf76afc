"""LiveSession: the asyncio adapter around the Live protocol core, driven by the daemon.

Every decision (turn accounting and replay, goAway handover readiness, failure
classification and backoff, which resumption handle to offer, what each server message
means) lives in the sans-I/O core, ``live.protocol.LiveProtocol``, and the modules it
builds on (``live.failures``, ``core.replay``, ``core.backoff``, ``live.handles``); read
its docstring for the hard-won facts. This module only does the I/O: it connects with
google-genai, runs the tasks, moves messages between the SDK and the core, and emits the
core's events through the sink.

One supervisor task per LiveSession. While the daemon wants a session (``open()``), it
keeps one connection up: connect (setupComplete within ``setup_timeout_s``: the SDK has
no timeout of its own), then three child tasks per connection: the sender (drains the
uplink log), the receiver (server messages -> core -> events) and the controller (idle
close, goAway handover). Whatever ends a connection ends all three. A connection left on
purpose (idle close, ``stop()``, a setup timeout) closes with 1000, not 1011
(``live.ws_connection``).

Uplink: ``send_audio`` & co. never block and never talk to the socket; the core buffers
them and the sender sends what the core says is next.

Bad frames: google-genai's ``AsyncSession.receive()`` is an async generator that ends at
each turnComplete and dies on a frame it cannot parse (non-JSON -> ValueError /
UnicodeDecodeError, unknown message -> TypeError, and the rest of
``UNREADABLE_FRAME_ERRORS``). Each of those exceptions is raised
after the frame was consumed from the websocket, so the receiver simply starts a new
``receive()``: a bad frame costs that one message. Only public SDK methods are used;
no SDK internals are patched or wrapped.

Tools: each call runs in its own task (a plain-function tool on a worker thread), so
the conversation goes on while it runs; the core says what to send when it finishes
(scheduling, barge-in: ``live.tool_calls``). A toolCallCancellation cancels the task;
calls still running when their connection ends are cancelled (they are not replayed).

A retired model: when the core asks for it (``FailureOutcome.list_models``), the models
list is read through the SDK (``client.aio.models.list()``, bounded by
``setup_timeout_s``) and handed back to the core, which picks the replacement.

Threading: call every method from the event loop's thread. The event sink is called
synchronously from the session's tasks and must not block (put events on a queue).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random as random_module
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import websockets
from google import genai
from google.genai import errors, types

from edge_agent.config import GeminiConfig, ReconnectConfig
from edge_agent.core.backoff import Failure
from edge_agent.core.events import LiveEvent, ToolCallCancelled, ToolCalled
from edge_agent.core.replay import UplinkKind, UplinkMessage
from edge_agent.live.connect_config import (
    build_http_options,
    build_live_connect_config,
    profile_for,
    ssl_context_for,
)
from edge_agent.live.failures import (
    Caught,
    describe_setup_timeout,
    describe_transport_error,
    endpoint_of,
    is_keepalive_timeout,
)
from edge_agent.live.fallback import ListedModel
from edge_agent.live.handles import DEFAULT_VALIDITY_S, HandleStore, StoredHandle
from edge_agent.live.profiles import MidSessionText
from edge_agent.live.protocol import End, LiveProtocol, LiveStatus, SessionState
from edge_agent.live.tools import ToolRegistry, builtin_tools
from edge_agent.secrets import redact, register_secret

__all__ = ["LiveSession", "LiveStatus", "SessionState"]

logger = logging.getLogger(__name__)

AUDIO_IN_MIME = "audio/pcm;rate=16000"
MAX_PENDING_TEXTS = 8  # text turns waiting for a connection (oldest dropped)
# What google-genai raises for a server frame it cannot parse, after the frame was read:
# non-JSON / non-UTF-8 / pydantic -> ValueError, unknown message -> TypeError, JSON that is
# not an object (an array, a string) -> AttributeError, nesting deeper than the JSON
# decoder's recursion limit -> RecursionError (found by tests/test_fuzz_server_messages.py).
UNREADABLE_FRAME_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    AttributeError,
    LookupError,
    RecursionError,
)


class _NoKey(Exception):
    pass


class LiveSession:
    """The Gemini Live connection manager; see the module docstring."""

    def __init__(
        self,
        cfg: GeminiConfig,
        reconnect: ReconnectConfig,
        api_key_provider: Callable[[], Any],
        state_dir: str | Path,
        sink: Callable[[LiveEvent], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = random_module.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
        tools: ToolRegistry | None = None,
        handle_validity_s: float = DEFAULT_VALIDITY_S,
        tools_provider: Callable[[], Awaitable[ToolRegistry]] | None = None,
    ) -> None:
        """No I/O here. ``clock``/``sleep`` pace the reconnect policy only (tests pass a
        fast fake pair); socket timeouts and the goAway deadline use the loop's time.
        ``tools_provider``, when given, is awaited before each connection for the tools
        to declare (MCP servers list theirs at session start); it must not take long."""
        self._tools = tools if tools is not None else builtin_tools()
        self._proto = LiveProtocol(
            cfg, reconnect, random, handle_validity_s, self._tools.declared_behaviors()
        )
        self._key_provider = api_key_provider
        self._sink = sink
        self._clock = clock
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._tools_provider = tools_provider
        self._texts: deque[str] = deque(maxlen=MAX_PENDING_TEXTS)
        self._handles = _HandleWriter(HandleStore(state_dir, handle_validity_s, wall_clock))
        self._clients = _ClientCache()
        self._stopping = False
        self._wake = asyncio.Event()  # open/close/config changes for the supervisor
        self._uplink = asyncio.Event()  # new uplink entries for the sender
        self._control = asyncio.Event()  # close request / handover progress
        self._task: asyncio.Task[None] | None = None
        self._conn_task: asyncio.Task[None] | None = None
        self._tool_tasks: dict[str, asyncio.Task[None]] = {}

    # ---- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Start the supervisor task (needs a running loop). Idempotent."""
        if self._task is not None or self._stopping:
            return
        self._handles.start()
        self._proto.started()
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name="live-session")

    async def stop(self) -> None:
        """Cancel everything and close the connection; fast and idempotent."""
        if self._stopping:
            return
        self._stopping = True
        self._proto.close()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        await self._handles.stop()
        await self._clients.drop()
        self._proto.stopped()

    def open(self) -> None:
        """The daemon wants a session (wake word, button). Never bypasses a backoff wait."""
        if self._proto.open():
            self._wake.set()

    def close(self) -> None:
        """Idle close: end the conversation's connection; the handle is kept for next time."""
        if not self._proto.close():
            return
        self._wake.set()
        self._control.set()
        conn = self._conn_task
        if conn is not None and not self._proto.conn.open:
            conn.cancel()  # still connecting: nothing to close gracefully

    def config_changed(
        self,
        new_cfg: GeminiConfig,
        new_key_provider: Callable[[], Any] | None = None,
        new_reconnect: ReconnectConfig | None = None,
    ) -> None:
        """After a reload: leave the fatal state and retry at once with the new settings.

        A live connection is not interrupted; the new settings apply to the next one.
        """
        if new_key_provider is not None:
            self._key_provider = new_key_provider
        self._proto.config_changed(new_cfg, new_reconnect)
        self._wake.set()

    # ---- uplink (never blocks) -------------------------------------------------------

    def send_audio(self, pcm16k: bytes) -> None:
        """16 kHz mono s16le; buffered while no connection is up (bounded, drop-oldest)."""
        self._proto.send_audio(pcm16k)
        self._uplink.set()

    def activity_start(self) -> None:
        """The user's turn begins (client-side VAD, wake word or button)."""
        self._proto.activity_start()
        self._uplink.set()

    def activity_end(self) -> None:
        """The user's turn ends: activityEnd, or audioStreamEnd with the server's VAD."""
        self._proto.activity_end()
        self._uplink.set()

    def interrupt(self) -> None:
        """Barge-in: open the user's turn (see ``LiveProtocol.interrupt``). The rest of the
        reply is not dropped here: the conversation machine decides what audio is stale."""
        self._proto.interrupt()
        self._uplink.set()

    def send_text(self, text: str) -> None:
        """A complete text turn for the model (``edge-agent say``, announcements), in the
        form the model's family takes. Sent on the connection that is up, or the next one;
        not replayed after a connection is lost mid-turn (the daemon's reply timeout
        covers that)."""
        self._texts.append(text)
        self._uplink.set()

    # ---- status ----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._proto.ready

    @property
    def state(self) -> SessionState:
        return self._proto.state

    @property
    def cfg(self) -> GeminiConfig:
        return self._proto.cfg

    def status(self) -> LiveStatus:
        return self._proto.status(self._clock(), self._wall_clock(), len(self._tool_tasks))

    # ---- supervisor --------------------------------------------------------------------

    async def _supervise(self) -> None:
        proto = self._proto
        try:
            while True:
                self._wake.clear()
                if not proto.want_open:
                    self._emit_if(proto.session_idle())
                    await self._wake.wait()
                    continue
                delay = proto.connect_delay_s(self._clock())
                if delay > 0:
                    await self._sleep_or_wake(delay)
                    continue  # re-evaluate: woken early, or the time has come
                proto.session_started()
                conn = asyncio.get_running_loop().create_task(
                    self._connection_attempt(), name="live-connection"
                )
                self._conn_task = conn
                try:
                    await asyncio.wait([conn])
                finally:
                    if not conn.done():
                        conn.cancel()
                        await asyncio.wait([conn])
                    self._conn_task = None
                if not conn.cancelled() and conn.exception() is not None:
                    # A bug of ours: log it and retry with backoff rather than die.
                    exc = conn.exception()
                    logger.error("Live connection task crashed", exc_info=exc)
                    reason = f"internal error: {exc!r}"
                    await self._failed(proto.failure(Caught.INTERNAL, None, reason))
        finally:
            self._emit_if(proto.end_session())

    async def _sleep_or_wake(self, delay_s: float) -> None:
        """Wait out a backoff delay, or less if open/close/config_changed wakes us."""
        sleeper = asyncio.ensure_future(self._sleep(delay_s))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait([sleeper, waker], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (sleeper, waker):
                fut.cancel()
            await asyncio.wait([sleeper, waker])

    # ---- one connection ----------------------------------------------------------------

    async def _connection_attempt(self) -> None:
        proto = self._proto
        if proto.needs_handle_load:
            proto.handles.loaded_from_store(await self._handles.load(proto.model))
        # Handles are aged on the loop's monotonic clock, the one on_message stamps them with.
        loop_now = asyncio.get_running_loop().time()
        handle, clear_stored = proto.choose_handle(self._wall_clock(), loop_now)
        if clear_stored:
            await self._handles.clear()
        proto.attempt_started(resuming=handle is not None)
        outcome = await self._connect_and_serve(handle)
        if isinstance(outcome, Failure):
            await self._failed(outcome)
        else:
            proto.connection_ended(outcome, self._clock())
        # End.CLOSE: the supervisor ends the session (unless open() came back meanwhile)

    async def _connect_and_serve(self, handle: StoredHandle | None) -> End | Failure:
        proto = self._proto
        cfg = proto.cfg
        try:
            client = await self._clients.get(self._api_key(), cfg)
        except _NoKey as exc:
            return proto.failure(Caught.NO_KEY, None, str(exc))
        except (OSError, ssl.SSLError) as exc:
            return proto.failure(Caught.CLIENT_SETUP, None, f"TLS setup: {exc}")
        if self._tools_provider is not None:
            try:
                self._tools = await self._tools_provider()
                proto.set_tool_behaviors(self._tools.declared_behaviors())
            except Exception:  # keep the last tools: a tool source must not stop the session
                logger.exception("could not gather the tools; declaring the previous ones")
        model = proto.model
        config = build_live_connect_config(
            cfg, handle.handle if handle else None, self._tools, model=model
        )
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    async with asyncio.timeout(cfg.setup_timeout_s):
                        session = await stack.enter_async_context(
                            client.aio.live.connect(model=model, config=config)
                        )
                except TimeoutError:  # covers TCP, TLS and the upgrade, not only setup
                    reason = describe_setup_timeout(endpoint_of(cfg.base_url), cfg.setup_timeout_s)
                    return proto.failure(Caught.SETUP_TIMEOUT, None, reason)
                if session.setup_complete is None:
                    return proto.failure(Caught.NO_SETUP_COMPLETE)
                self._emit(proto.setup_completed(self._clock()))
                self._uplink.set()
                return await self._serve(session)  # leaving the stack closes the websocket
        except errors.APIError as exc:
            if _keepalive_timed_out(exc):
                return proto.failure(Caught.KEEPALIVE_TIMEOUT)
            return proto.failure(Caught.API_ERROR, _api_error_code(exc), _api_error_reason(exc))
        except websockets.InvalidStatus as exc:
            return proto.failure(Caught.HTTP_REFUSED, exc.response.status_code)
        except (OSError, websockets.WebSocketException, *UNREADABLE_FRAME_ERRORS) as exc:
            # OSError covers refused/unreachable/reset, TLS errors and the opening handshake
            # timeout; UNREADABLE_FRAME_ERRORS: an unparsable first server frame.
            if isinstance(exc, OSError):
                reason = describe_transport_error(exc, endpoint_of(cfg.base_url))
            else:
                reason = f"{exc.__class__.__name__}: {exc}"
            return proto.failure(Caught.TRANSPORT, None, reason)
        finally:
            proto.connection_closed()

    async def _serve(self, session: Any) -> End | Failure:
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[Any]] = [
            loop.create_task(self._receive_loop(session), name="live-receive"),
            loop.create_task(self._send_loop(session), name="live-send"),
            loop.create_task(self._control_loop(), name="live-control"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            first = next(t for t in tasks if t in done)
            return first.result()
        finally:
            for task in tasks:
                task.cancel()
            tool_tasks = list(self._tool_tasks.values())
            for task in tool_tasks:
                task.cancel()
            await asyncio.wait(tasks + tool_tasks)
            self._tool_tasks.clear()

    async def _send_loop(self, session: Any) -> Failure:
        proto = self._proto
        while True:
            if self._texts:
                text = self._texts.popleft()
                try:
                    await _send_text(session, text, profile_for(proto.cfg.model).mid_session_text)
                except websockets.ConnectionClosed as exc:
                    self._texts.appendleft(text)  # for the next connection
                    return self._closed_failure(exc)
                logger.info("sent a text turn (%d characters)", len(text))
                continue
            item = proto.next_uplink()
            if item is None:
                self._uplink.clear()
                await self._uplink.wait()
                continue
            seq, message = item
            try:
                await _send_one(session, message)
            except websockets.ConnectionClosed as exc:
                return self._closed_failure(exc)
            except (ValueError, TypeError) as exc:  # refused by the SDK: resending won't help
                logger.warning("dropped an uplink %s the SDK refused: %s", message.kind, exc)
            proto.uplink_sent(seq)
            if message.kind is not UplinkKind.AUDIO:
                logger.debug("sent %s", message.kind)

    def _closed_failure(self, exc: websockets.ConnectionClosed) -> Failure:
        """A send found the connection closed: how it ended, as the core sees it."""
        if _keepalive_timed_out(exc):
            return self._proto.failure(Caught.KEEPALIVE_TIMEOUT)
        frame = exc.rcvd
        if frame is None:
            return self._proto.failure(Caught.CLOSED)
        return self._proto.failure(Caught.CLOSED, frame.code, frame.reason)

    async def _control_loop(self) -> End:
        proto = self._proto
        loop = asyncio.get_running_loop()
        while True:
            self._control.clear()
            end = proto.connection_end(loop.time())
            if end is not None:
                return end
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(proto.deadline_in_s(loop.time())):
                    await self._control.wait()

    async def _receive_loop(self, session: Any) -> Failure:
        proto = self._proto
        stream = None
        try:
            while True:
                if stream is None:
                    stream = session.receive().__aiter__()
                failure = None
                try:
                    message = await stream.__anext__()
                except StopAsyncIteration:  # receive() ends at each turnComplete
                    stream = None
                    continue
                except errors.APIError as exc:
                    stream = None
                    if _keepalive_timed_out(exc):
                        failure = proto.receive_error(Caught.KEEPALIVE_TIMEOUT)
                    else:
                        code, reason = _api_error_code(exc), _api_error_reason(exc)
                        failure = proto.receive_error(Caught.API_ERROR, code, reason)
                except UNREADABLE_FRAME_ERRORS as exc:
                    stream = None
                    what = f"{exc.__class__.__name__}: {exc}"
                    failure = proto.receive_error(Caught.UNREADABLE, None, what)
                else:
                    try:
                        self._on_message(session, message)
                    except Exception:
                        logger.exception("failed to handle a Live server message; skipped")
                if failure is not None:
                    return failure
        finally:
            if stream is not None:
                with contextlib.suppress(Exception):
                    await stream.aclose()

    def _on_message(self, session: Any, message: types.LiveServerMessage) -> None:
        loop_now = asyncio.get_running_loop().time()
        reaction = self._proto.on_message(message, loop_now, self._wall_clock())
        for event in reaction.events:
            if isinstance(event, ToolCallCancelled):
                for call_id in event.call_ids:
                    task = self._tool_tasks.pop(call_id, None)
                    if task is not None:
                        task.cancel()
            self._emit(event)
            if isinstance(event, ToolCalled):
                self._start_tool_call(session, event)
        if reaction.new_handle is not None:
            self._handles.save_soon(reaction.new_handle)
        self._control.set()  # turn accounting or a goAway may have moved the handover

    async def _failed(self, failure: Failure) -> None:
        outcome = self._proto.failed(failure, self._clock())
        if outcome.list_models:
            listed, error = await self._list_live_models()
            outcome = self._proto.models_listed(listed, error, self._clock())
        if outcome.clear_stored_handle:
            await self._handles.clear()
        for event in outcome.events:
            self._emit(event)

    # ---- tools ---------------------------------------------------------------------------

    def _start_tool_call(self, session: Any, call: ToolCalled) -> None:
        key = call.call_id or f"anon-{id(call)}"
        task = asyncio.get_running_loop().create_task(
            self._run_tool(session, call), name=f"live-tool-{call.name}"
        )
        self._tool_tasks[key] = task
        task.add_done_callback(lambda _t: self._tool_tasks.pop(key, None))

    async def _run_tool(self, session: Any, call: ToolCalled) -> None:
        answer = await self._tools.answer(call.name, call.args)
        if call.call_id is None:
            logger.warning("cannot answer tool call %s: it has no id", call.name)
            return
        response = self._proto.tool_answered(call.call_id, answer)
        if response is None:
            return
        try:
            await session.send_tool_response(function_responses=[response])
        except websockets.ConnectionClosed:
            logger.info("tool %s answered after the connection closed; dropped", call.name)
        except ValueError as exc:  # e.g. a call without an id
            logger.warning("cannot answer tool call %s: %s", call.name, exc)

    # ---- models list (a retired model) ---------------------------------------------

    async def _list_live_models(self) -> tuple[list[ListedModel] | None, str]:
        """Every model the service lists, with its supported actions; (None, why) on error."""
        cfg = self._proto.cfg
        try:
            client = await self._clients.get(self._api_key(), cfg)
            async with asyncio.timeout(cfg.setup_timeout_s):
                pager = await client.aio.models.list()
                listed = [
                    ListedModel(model.name or "", tuple(model.supported_actions or ()))
                    async for model in pager
                ]
        except TimeoutError:
            return None, f"no answer within {cfg.setup_timeout_s:g} s"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # network, TLS, auth: all mean "no list now"
            return None, redact(f"{exc.__class__.__name__}: {exc}")[:200]
        logger.info("models list: %d models", len(listed))
        return listed, ""

    # ---- key and plumbing --------------------------------------------------------------

    def _api_key(self) -> str:
        try:
            value = self._key_provider()
        except Exception as exc:
            raise _NoKey(redact(str(exc)) or exc.__class__.__name__) from None
        key = str(getattr(value, "value", value) or "").strip()
        if not key:
            raise _NoKey("no API key")
        register_secret(key)
        return key

    def _emit(self, event: LiveEvent) -> None:
        try:
            self._sink(event)
        except Exception:
            logger.exception("Live event sink failed on %s", type(event).__name__)

    def _emit_if(self, event: LiveEvent | None) -> None:
        if event is not None:
            self._emit(event)


async def _send_one(session: Any, message: UplinkMessage) -> None:
    kind = message.kind
    if kind is UplinkKind.AUDIO:
        await session.send_realtime_input(
            audio=types.Blob(data=message.audio, mime_type=AUDIO_IN_MIME)
        )
    elif kind is UplinkKind.ACTIVITY_START:
        await session.send_realtime_input(activity_start=types.ActivityStart())
    elif kind is UplinkKind.ACTIVITY_END:
        await session.send_realtime_input(activity_end=types.ActivityEnd())
    elif kind is UplinkKind.AUDIO_STREAM_END:
        await session.send_realtime_input(audio_stream_end=True)


async def _send_text(session: Any, text: str, form: MidSessionText) -> None:
    """One text turn: clientContent with turn_complete, or realtime text (3.1)."""
    if form is MidSessionText.REALTIME_TEXT:
        await session.send_realtime_input(text=text)
    else:
        turn = types.Content(role="user", parts=[types.Part(text=text)])
        await session.send_client_content(turns=turn, turn_complete=True)


def _keepalive_timed_out(exc: BaseException) -> bool:
    """Did our keepalive give up on the server? google-genai raises its APIError inside
    ``except ConnectionClosed`` and keeps only the received close frame (none here, so
    1006); the ConnectionClosed, its ``__context__``, still has the frame websockets sent
    (see ``live.failures``)."""
    closed = exc if isinstance(exc, websockets.ConnectionClosed) else exc.__context__
    if not isinstance(closed, websockets.ConnectionClosed):
        return False
    sent = closed.sent
    return is_keepalive_timeout(
        closed.rcvd is not None,
        None if sent is None else sent.code,
        None if sent is None else sent.reason,
    )


def _api_error_code(exc: errors.APIError) -> int | None:
    return exc.code if isinstance(exc.code, int) else None


def _api_error_reason(exc: errors.APIError) -> str:
    details = exc.details
    if isinstance(details, str):
        return details
    return str(exc.message or "")


class _ClientCache:
    """One SDK client per (key, endpoint) pair: building one costs ~60 ms."""

    def __init__(self) -> None:
        self._client: genai.Client | None = None
        self._key: tuple[Any, ...] | None = None

    async def get(self, api_key: str, cfg: GeminiConfig) -> genai.Client:
        cache_key = (
            api_key,
            cfg.base_url,
            cfg.api_version,
            cfg.ca_file,
            cfg.keepalive_ping_interval_s,
            cfg.keepalive_ping_timeout_s,
        )
        if self._client is None or self._key != cache_key:
            await self.drop()
            self._client = genai.Client(
                api_key=api_key, http_options=build_http_options(cfg, ssl_context_for(cfg))
            )
            self._key = cache_key
        return self._client

    async def drop(self) -> None:
        client, self._client = self._client, None
        self._key = None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aio.aclose()
            with contextlib.suppress(Exception):
                client.close()


class _HandleWriter:
    """HandleStore calls on one worker thread (fsync can take a while on an SD card).

    One worker keeps writes in order; a save that a newer write has superseded by the
    time it runs is skipped; a cancelled caller does not abort a write half way. Before
    ``start()`` (direct use in tests) calls run inline.
    """

    def __init__(self, store: HandleStore) -> None:
        self._store = store
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._futures: set[asyncio.Future[Any]] = set()
        self._generation = 0  # bumped per queued write: a superseded save is skipped

    def start(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="live-handle-store"
        )

    async def stop(self) -> None:
        """Let queued writes finish (bounded), then let the worker go."""
        if self._futures:
            await asyncio.wait(list(self._futures), timeout=5.0)
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    async def load(self, model: str) -> StoredHandle | None:
        return await self._call(self._store.load, model)

    async def clear(self) -> None:
        self._generation += 1  # a save still queued must not bring it back
        await self._call(self._store.clear)

    def save_soon(self, stored: StoredHandle) -> None:
        """Persist without waiting: the receive loop must not wait for an fsync."""
        executor = self._executor
        if executor is None:
            try:
                self._store.save(stored.handle, stored.model, stored.issued_at)
            except OSError as exc:
                logger.warning("resumption handle store: %s", exc)
            return
        self._generation += 1
        future = asyncio.get_running_loop().run_in_executor(
            executor, self._save_if_latest, self._generation, stored
        )
        self._futures.add(future)
        future.add_done_callback(self._write_done)

    def _save_if_latest(self, generation: int, stored: StoredHandle) -> None:
        """Runs on the worker thread."""
        if generation == self._generation:
            self._store.save(stored.handle, stored.model, stored.issued_at)

    def _write_done(self, future: asyncio.Future[Any]) -> None:
        self._futures.discard(future)
        if future.cancelled():
            return
        exc = future.exception()
        if isinstance(exc, OSError):
            logger.warning("resumption handle store: %s", exc)
        elif exc is not None:
            logger.error("resumption handle store failed", exc_info=exc)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        executor = self._executor
        if executor is None:
            return fn(*args)
        future = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        try:
            return await asyncio.shield(future)
        except OSError as exc:
            logger.warning("resumption handle store: %s", exc)
            return None

"""LiveSession: the long-lived Gemini Live connection manager the daemon drives.

One supervisor task per LiveSession. While the daemon wants a session (``open()``), it
keeps one connection up: connect (setupComplete within ``setup_timeout_s``), then three
child tasks per connection: the sender (drains the uplink log), the receiver (server
messages -> events) and the controller (idle close, goAway handover). Whatever ends a
connection ends all three; failures go through ``core.backoff.ReconnectPolicy``.

Uplink: ``send_audio`` & co. never block and never talk to the socket. They append to
``core.replay.ReplayLog``, which is both the offline buffer (speech while connecting is
sent after setup) and the replay log (after a drop or a handover, whatever the last
resumption handle does not cover is sent again first, then the buffered audio). So not
one sample of the user's speech is lost across a drop or a handover, as long as the
gap fits in ``replay_buffer_max_s``. Refused handle -> fresh session: only the turns
that were never answered are re-sent (see ``ReplayLog.rewind_for_fresh_session``).

goAway: keep serving until every sent turn is answered, no reply is streaming and a
handle after the last answer has arrived (the reply being played is not cut), or until
``timeLeft`` minus a margin, whichever first; then close the old connection (resuming
while it is open gets 1011) and resume. "No reply is streaming" matters with the server's
VAD: the server ends the turn itself, so no marker of ours is owed while it answers.

Resume refused with 1011 (the server still holds the old connection, e.g. after a Wi-Fi
roam): retried with backoff, and after ``BUSY_RESUME_LIMIT`` refusals the handle is
dropped for a fresh session (``core.backoff``).

Bad frames: google-genai's ``AsyncSession.receive()`` is an async generator that ends at
each turnComplete and dies on a frame it cannot parse (non-JSON -> ValueError /
UnicodeDecodeError, unknown message -> TypeError). Each of those exceptions is raised
after the frame was consumed from the websocket, so the receiver simply starts a new
``receive()``: a bad frame costs that one message. Only public SDK methods are used;
no SDK internals are patched or wrapped. A flood of bad frames in a row (50) counts as a
protocol failure and reconnects with backoff.

Barge-in (``interrupt()``): the client drops the rest of the current reply at once
(no round trip: ModelAudioReceived/OutputTranscript events stop until that reply's turnComplete;
only when a reply is streaming or due, else the next reply would be muted whole),
and with client-side turn marking it opens the user's turn with ``activityStart``: the
server answers ``interrupted`` and waits for the user's words. The daemon then streams
audio and ends the turn with ``activity_end()`` as usual. With the server's own VAD,
``activityStart`` is not allowed: the server cuts its reply when its VAD hears speech.

Known limits (inherent to handles without ``transparent``):
- A turn whose answer arrived but whose handle did not (drop in between) is forgotten by
  the server; it is re-sent on resume and answered a second time.
- A reply cut by a drop is generated again from its start after the resume.
- With the server's VAD the server, not our markers, ends turns: a turnComplete is taken
  to answer everything sent so far (audio spoken in that instant may not be replayed),
  and ``interrupt()`` cannot know a reply is due until its first audio arrives.
- Tool responses are not replayed: a call still running when its connection dies is
  cancelled; the model asks again if it still needs it.

Threading: call every method from the event loop's thread. The event sink is called
synchronously from the session's tasks and must not block (put events on a queue).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random as random_module
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import websockets
from google import genai
from google.genai import errors, types

from edge_agent.config import GeminiConfig, ReconnectConfig
from edge_agent.core.backoff import (
    BUSY_RESUME_LIMIT,
    Failure,
    FailureKind,
    ReconnectPolicy,
    Verdict,
)
from edge_agent.core.events import (
    GenerationCompleted,
    GoAwayReceived,
    InputTranscript,
    LiveEvent,
    ModelAudioReceived,
    OutputTranscript,
    ServerInterrupted,
    SessionClosed,
    SessionLost,
    SessionReady,
    ToolCallCancelled,
    ToolCalled,
    TurnCompleted,
)
from edge_agent.core.replay import ReplayLog, ReplayStats, UplinkKind, UplinkMessage
from edge_agent.live.connect_config import (
    build_http_options,
    build_live_connect_config,
    ssl_context_for,
)
from edge_agent.live.handles import DEFAULT_VALIDITY_S, HandleStore, StoredHandle
from edge_agent.live.tools import ToolRegistry, builtin_tools
from edge_agent.secrets import redact, register_secret

logger = logging.getLogger(__name__)

AUDIO_IN_MIME = "audio/pcm;rate=16000"
MODEL_AUDIO_RATE_HZ = 24_000
COALESCE_AUDIO_BYTES = 32_000  # a replayed backlog goes out in 1 s messages
MAX_BAD_FRAMES_IN_A_ROW = 50
HANDOVER_MARGIN_S = 5.0  # hand over at the latest this long before goAway's timeLeft
DEFAULT_TIME_LEFT_S = 10.0  # if a goAway's timeLeft cannot be parsed


class SessionState(StrEnum):
    STOPPED = "stopped"  # not started, or stopped
    IDLE = "idle"  # started, nobody asked for a session
    CONNECTING = "connecting"
    READY = "ready"
    HANDING_OVER = "handing_over"  # goAway: still serving, new connection soon
    RETRY_WAIT = "retry_wait"  # backoff before the next attempt
    FATAL = "fatal"  # key/config refused: slow retries until config_changed()


@dataclass(frozen=True)
class LiveStatus:
    state: SessionState
    ready: bool
    last_error: str | None
    fatal: bool
    retry_in_s: float | None
    reconnect_count: int  # attempts made after a failure
    connection_attempts: int
    handovers: int
    bad_frames: int
    tool_calls_running: int
    handle_age_s: float | None
    replay: ReplayStats


# ---- internals -------------------------------------------------------------------------


class _End(StrEnum):
    CLOSE = "close"
    HANDOVER = "handover"


@dataclass
class _Connection:
    """Per-connection facts the classifier needs."""

    resuming: bool
    setup_done: bool = False
    after_go_away: bool = False
    go_away_deadline: float | None = None  # loop time


class _Failed(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.describe())
        self.failure = failure


class _NoKey(Exception):
    pass


def _is_close_code(code: object) -> bool:
    return isinstance(code, int) and 1000 <= code <= 4999


def _parse_duration_s(value: object) -> float:
    """goAway.timeLeft is a protobuf Duration string such as "50s" or "1.5s"."""
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*s?\s*", str(value or ""))
    return float(match.group(1)) if match else DEFAULT_TIME_LEFT_S


def _api_error_reason(exc: errors.APIError) -> str:
    details = exc.details
    if isinstance(details, str):
        return details
    return str(exc.message or "")


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
    ) -> None:
        """No I/O here. ``clock``/``sleep`` pace the reconnect policy only (tests pass a
        fast fake pair); socket timeouts use the event loop's own time."""
        self._cfg = cfg
        self._key_provider = api_key_provider
        self._sink = sink
        self._clock = clock
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._tools = tools if tools is not None else builtin_tools()
        self._store = HandleStore(state_dir, handle_validity_s, wall_clock)
        self._policy = ReconnectPolicy(reconnect, random)
        self._log = ReplayLog.for_seconds(reconnect.replay_buffer_max_s)

        self._state = SessionState.STOPPED
        self._want_open = False
        self._stopping = False
        self._wake = asyncio.Event()  # open/close/config changes for the supervisor
        self._uplink = asyncio.Event()  # new uplink entries for the sender
        self._control = asyncio.Event()  # close request / handover progress
        self._task: asyncio.Task[None] | None = None
        self._conn_task: asyncio.Task[None] | None = None
        self._tool_tasks: dict[str, asyncio.Task[None]] = {}
        self._store_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._store_futures: set[asyncio.Future[Any]] = set()
        self._store_generation = 0  # bumped per queued write: a superseded save is skipped

        self._handle: StoredHandle | None = None
        self._handle_loaded = False
        self._client: genai.Client | None = None
        self._client_key: tuple[Any, ...] | None = None
        self._connected = False
        self._activity_open = False
        self._suppress_output = False
        self._retry_at: float | None = None
        self._last_error: str | None = None
        self._attempts = 0
        self._reconnects = 0
        self._handovers = 0
        self._bad_frames = 0
        self._retry_pending = False
        self._session_active = False  # a session was opened and not yet announced closed
        self._warned_rate = False
        self._model_turn_open = False  # model output seen since the last turnComplete

    # ---- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Start the supervisor task (needs a running loop). Idempotent."""
        if self._task is not None or self._stopping:
            return
        self._store_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="live-handle-store"
        )
        self._set_state(SessionState.IDLE)
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name="live-session")

    async def stop(self) -> None:
        """Cancel everything and close the connection; fast and idempotent."""
        if self._stopping:
            return
        self._stopping = True
        self._want_open = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        if self._store_futures:
            await asyncio.wait(list(self._store_futures), timeout=5.0)
        if self._store_executor is not None:
            self._store_executor.shutdown(wait=False)
        await self._drop_client()
        self._set_state(SessionState.STOPPED)

    def open(self) -> None:
        """The daemon wants a session (wake word, button). Never bypasses a backoff wait."""
        if self._want_open:
            return
        self._want_open = True
        self._wake.set()

    def close(self) -> None:
        """Idle close: end the conversation's connection; the handle is kept for next time."""
        if not self._want_open:
            return
        self._want_open = False
        self._wake.set()
        self._control.set()
        conn = self._conn_task
        if conn is not None and not self._connected:
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
        self._cfg = new_cfg
        if new_key_provider is not None:
            self._key_provider = new_key_provider
        if new_reconnect is not None:
            self._log.max_audio_bytes = ReplayLog.for_seconds(
                new_reconnect.replay_buffer_max_s
            ).max_audio_bytes
        self._policy.config_changed(new_reconnect)
        self._retry_at = None
        if self._state is SessionState.FATAL:
            self._set_state(SessionState.RETRY_WAIT)
        self._wake.set()

    # ---- uplink (never blocks) -------------------------------------------------------

    def send_audio(self, pcm16k: bytes) -> None:
        """16 kHz mono s16le; buffered while no connection is up (bounded, drop-oldest)."""
        if pcm16k:
            self._append(UplinkMessage(UplinkKind.AUDIO, audio=bytes(pcm16k)))

    def activity_start(self) -> None:
        """The user's turn begins (client-side VAD, wake word or button)."""
        if self._activity_open:
            return
        self._activity_open = True
        if not self._cfg.server_vad:
            self._append(UplinkMessage(UplinkKind.ACTIVITY_START))

    def activity_end(self) -> None:
        """The user's turn ends: activityEnd, or audioStreamEnd with the server's VAD."""
        if not self._activity_open:
            return
        self._activity_open = False
        kind = UplinkKind.AUDIO_STREAM_END if self._cfg.server_vad else UplinkKind.ACTIVITY_END
        self._append(UplinkMessage(kind))

    def send_text(self, text: str) -> None:
        """A typed user turn (clientContent with turnComplete)."""
        if text:
            self._append(UplinkMessage(UplinkKind.TEXT_TURN, text=text))

    def interrupt(self) -> None:
        """Barge-in: drop the rest of the reply now and open the user's turn (see module doc).

        Output is suppressed only while a reply is streaming or due: the suppression lasts
        until a turnComplete, so with nothing to cut it would swallow the next reply whole.
        """
        if self._log.reply_pending or self._model_turn_open:
            self._suppress_output = True
        if not self._cfg.server_vad:
            self.activity_start()

    def _append(self, message: UplinkMessage) -> None:
        self._log.append(message)
        self._uplink.set()

    # ---- status ----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._state in (SessionState.READY, SessionState.HANDING_OVER)

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def cfg(self) -> GeminiConfig:
        return self._cfg

    def status(self) -> LiveStatus:
        retry_in = None
        if self._retry_at is not None:
            retry_in = max(0.0, self._retry_at - self._clock())
        handle = self._handle
        return LiveStatus(
            state=self._state,
            ready=self.ready,
            last_error=self._last_error,
            fatal=self._policy.fatal,
            retry_in_s=retry_in,
            reconnect_count=self._reconnects,
            connection_attempts=self._attempts,
            handovers=self._handovers,
            bad_frames=self._bad_frames,
            tool_calls_running=len(self._tool_tasks),
            handle_age_s=self._store.age_s(handle) if handle is not None else None,
            replay=self._log.stats(),
        )

    # ---- supervisor --------------------------------------------------------------------

    async def _supervise(self) -> None:
        try:
            while True:
                self._wake.clear()
                if not self._want_open:
                    if self._session_active:
                        self._end_session()
                    if self._state is not SessionState.FATAL:
                        self._set_state(SessionState.IDLE)
                    await self._wake.wait()
                    continue
                if self._retry_at is not None:
                    remaining = self._retry_at - self._clock()
                    if remaining > 0:
                        await self._sleep_or_wake(remaining)
                        continue  # re-evaluate: woken early, or the time has come
                    self._retry_at = None
                self._session_active = True
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
                    await self._failed(
                        Failure(FailureKind.PROTOCOL, None, f"internal error: {exc!r}"),
                        _Connection(resuming=False),
                    )
        finally:
            if self._session_active:
                self._end_session()

    def _end_session(self) -> None:
        """The daemon's session is over (close() or stop()): forget its uplink."""
        self._session_active = False
        self._log.clear()
        self._activity_open = False
        self._suppress_output = False
        logger.info("Live session closed")
        self._emit(SessionClosed())

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
        handle = await self._usable_handle()
        conn = _Connection(resuming=handle is not None)
        self._set_state(SessionState.CONNECTING)
        self._attempts += 1
        if self._retry_pending:
            self._reconnects += 1
            self._retry_pending = False
        try:
            end = await self._connect_and_serve(conn, handle)
        except _Failed as failed:
            await self._failed(failed.failure, conn)
            return
        if end is _End.HANDOVER:
            delay = self._policy.handed_over(self._clock())
            self._retry_at = self._clock() + delay if delay > 0 else None
            self._handovers += 1
            logger.info("Live connection handed over after goAway")
        else:
            self._policy.disconnected(self._clock())
        # _End.CLOSE: the supervisor ends the session (unless open() came back meanwhile)

    async def _connect_and_serve(self, conn: _Connection, handle: StoredHandle | None) -> _End:
        cfg = self._cfg
        try:
            client = await self._client_for(self._api_key(), cfg)
        except _NoKey as exc:
            raise _Failed(Failure(FailureKind.NO_KEY, None, str(exc), during_setup=True)) from None
        except (OSError, ssl.SSLError) as exc:
            raise _Failed(
                Failure(FailureKind.NETWORK, None, f"TLS setup: {exc}", during_setup=True)
            ) from None
        config = build_live_connect_config(cfg, handle.handle if handle else None, self._tools)
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    async with asyncio.timeout(cfg.setup_timeout_s):
                        session = await stack.enter_async_context(
                            client.aio.live.connect(model=cfg.model, config=config)
                        )
                except TimeoutError:
                    raise _Failed(
                        Failure(
                            FailureKind.SETUP_TIMEOUT,
                            None,
                            f"no setupComplete within {cfg.setup_timeout_s:g} s",
                            during_setup=True,
                            resuming=conn.resuming,
                        )
                    ) from None
                if session.setup_complete is None:
                    raise _Failed(
                        Failure(
                            FailureKind.PROTOCOL,
                            None,
                            "first server message was not setupComplete",
                            during_setup=True,
                            resuming=conn.resuming,
                        )
                    )
                conn.setup_done = True
                self._on_connected(conn)
                outcome = await self._serve(session, conn)
                if isinstance(outcome, Failure):
                    raise _Failed(outcome)
                return outcome  # leaving the stack closes the websocket (close handshake)
        except _Failed:
            raise
        except errors.APIError as exc:
            raise _Failed(self._failure_from_api_error(exc, conn)) from None
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            raise _Failed(
                Failure(FailureKind.HTTP, status, "websocket upgrade refused", True, conn.resuming)
            ) from None
        except (OSError, websockets.WebSocketException, ValueError, TypeError) as exc:
            # OSError covers refused/unreachable/reset, TLS errors and the opening handshake
            # timeout; ValueError/TypeError: an unparsable first server frame.
            raise _Failed(
                Failure(
                    FailureKind.NETWORK,
                    None,
                    f"{exc.__class__.__name__}: {exc}",
                    during_setup=not conn.setup_done,
                    resuming=conn.resuming,
                    after_go_away=conn.after_go_away,
                )
            ) from None
        finally:
            self._connected = False

    def _on_connected(self, conn: _Connection) -> None:
        self._policy.connected(self._clock())
        self._connected = True
        if conn.resuming:
            resent = self._log.rewind_for_resume()
        else:
            resent = self._log.rewind_for_fresh_session()
        self._suppress_output = False
        self._model_turn_open = False
        self._uplink.set()
        self._set_state(SessionState.READY)
        logger.info(
            "Live session ready (%s, attempt %d, %d uplink messages to (re)send)",
            "resumed" if conn.resuming else "new session",
            self._attempts,
            resent,
        )
        self._emit(SessionReady(resumed=conn.resuming))

    async def _serve(self, session: Any, conn: _Connection) -> _End | Failure:
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(self._receive_loop(session, conn), name="live-receive"),
            loop.create_task(self._send_loop(session, conn), name="live-send"),
            loop.create_task(self._control_loop(conn), name="live-control"),
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

    async def _send_loop(self, session: Any, conn: _Connection) -> Failure:
        while True:
            item = self._log.peek_unsent(COALESCE_AUDIO_BYTES)
            if item is None:
                self._uplink.clear()
                await self._uplink.wait()
                continue
            seq, message = item
            try:
                await self._send_one(session, message)
            except websockets.ConnectionClosed as exc:
                return self._failure_from_closed(exc, conn)
            except (ValueError, TypeError) as exc:  # refused by the SDK: resending won't help
                logger.warning("dropped an uplink %s the SDK refused: %s", message.kind, exc)
            self._log.mark_sent(seq)
            if message.kind is not UplinkKind.AUDIO:
                logger.debug("sent %s", message.kind)

    @staticmethod
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
        elif kind is UplinkKind.TEXT_TURN:
            await session.send_client_content(
                turns=types.Content(role="user", parts=[types.Part(text=message.text)]),
                turn_complete=True,
            )

    async def _control_loop(self, conn: _Connection) -> _End:
        loop = asyncio.get_running_loop()
        while True:
            self._control.clear()
            if not self._want_open:
                return _End.CLOSE
            timeout = None
            if conn.go_away_deadline is not None:
                quiet = self._log.settled and not self._model_turn_open
                if quiet or loop.time() >= conn.go_away_deadline:
                    return _End.HANDOVER
                timeout = conn.go_away_deadline - loop.time()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._control.wait()

    async def _receive_loop(self, session: Any, conn: _Connection) -> Failure:
        bad_in_a_row = 0
        stream = None
        try:
            while True:
                if stream is None:
                    stream = session.receive().__aiter__()
                try:
                    message = await stream.__anext__()
                except StopAsyncIteration:  # receive() ends at each turnComplete
                    stream = None
                    continue
                except errors.APIError as exc:
                    stream = None
                    if _is_close_code(exc.code):
                        return self._failure_from_api_error(exc, conn)
                    bad_in_a_row += 1
                    self._bad_message(f"error message from server: {exc}", bad_in_a_row)
                except (ValueError, TypeError) as exc:
                    stream = None
                    bad_in_a_row += 1
                    self._bad_message(f"{exc.__class__.__name__}: {exc}", bad_in_a_row)
                else:
                    bad_in_a_row = 0
                    try:
                        await self._on_message(session, message, conn)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        logger.exception("failed to handle a Live server message; skipped")
                if bad_in_a_row >= MAX_BAD_FRAMES_IN_A_ROW:
                    return Failure(
                        FailureKind.PROTOCOL,
                        None,
                        f"{bad_in_a_row} unreadable server messages in a row",
                        after_go_away=conn.after_go_away,
                    )
        finally:
            if stream is not None:
                with contextlib.suppress(Exception):
                    await stream.aclose()

    def _bad_message(self, what: str, in_a_row: int) -> None:
        self._bad_frames += 1
        text = redact(what)[:200]
        if in_a_row == 1:
            logger.warning("skipped an unreadable Live server message (%s)", text)
        else:
            logger.debug("skipped an unreadable Live server message (%s)", text)

    async def _on_message(
        self, session: Any, msg: types.LiveServerMessage, conn: _Connection
    ) -> None:
        content = msg.server_content
        if content is not None:
            self._on_server_content(content)
        if msg.tool_call is not None:
            for call in msg.tool_call.function_calls or []:
                self._start_tool_call(session, call)
        if msg.tool_call_cancellation is not None:
            ids = tuple(msg.tool_call_cancellation.ids or ())
            for call_id in ids:
                task = self._tool_tasks.pop(call_id, None)
                if task is not None:
                    task.cancel()
            logger.info("tool calls cancelled by the server: %s", ", ".join(ids))
            self._emit(ToolCallCancelled(ids))
        if msg.go_away is not None:
            self._on_go_away(msg.go_away.time_left, conn)
        update = msg.session_resumption_update
        if update is not None and update.resumable and update.new_handle:
            await self._on_new_handle(update.new_handle)
        if msg.usage_metadata is not None:
            logger.debug("usage: %s tokens", msg.usage_metadata.total_token_count)

    def _on_server_content(self, content: types.LiveServerContent) -> None:
        if content.input_transcription is not None and content.input_transcription.text:
            self._emit(InputTranscript(content.input_transcription.text))
        if content.model_turn is not None or content.output_transcription is not None:
            self._model_turn_open = True
        if content.model_turn is not None and not self._suppress_output:
            for part in content.model_turn.parts or []:
                blob = part.inline_data
                if blob is not None and blob.data and (blob.mime_type or "").startswith("audio/"):
                    self._check_audio_rate(blob.mime_type or "")
                    self._emit(ModelAudioReceived(blob.data))
        if (
            content.output_transcription is not None
            and content.output_transcription.text
            and not self._suppress_output
        ):
            self._emit(OutputTranscript(content.output_transcription.text))
        if content.interrupted:
            self._emit(ServerInterrupted())
        if content.generation_complete:
            self._emit(GenerationCompleted())
        if content.turn_complete:
            self._log.turn_completed(answers_all=self._cfg.server_vad)
            if not self._cfg.session_resumption:
                self._log.handle_received()  # nothing to resume: answered turns can go
            self._suppress_output = False
            self._model_turn_open = False
            self._control.set()
            self._emit(TurnCompleted())

    def _check_audio_rate(self, mime_type: str) -> None:
        match = re.search(r"rate=(\d+)", mime_type)
        if match and int(match.group(1)) != MODEL_AUDIO_RATE_HZ and not self._warned_rate:
            self._warned_rate = True
            logger.warning("model audio is %s, expected %d Hz", mime_type, MODEL_AUDIO_RATE_HZ)

    def _on_go_away(self, time_left: object, conn: _Connection) -> None:
        time_left_s = _parse_duration_s(time_left)
        margin = min(HANDOVER_MARGIN_S, time_left_s / 2.0)
        conn.after_go_away = True
        conn.go_away_deadline = asyncio.get_running_loop().time() + time_left_s - margin
        self._set_state(SessionState.HANDING_OVER)
        logger.info("Live server sent goAway (%.1f s left): handing over", time_left_s)
        self._control.set()
        self._emit(GoAwayReceived(time_left_s))

    async def _on_new_handle(self, handle: str) -> None:
        stored = StoredHandle(handle, self._wall_clock(), self._cfg.model)
        self._handle = stored
        self._handle_loaded = True
        self._log.handle_received()
        self._control.set()
        logger.debug("new resumption handle")
        self._save_handle_soon(stored)

    def _save_handle_soon(self, stored: StoredHandle) -> None:
        """Persist a handle without waiting: an fsync on a slow SD card must not hold up
        the receive loop. The single store worker keeps writes in order, and a save that
        a newer write has superseded by the time it runs is skipped."""
        executor = self._store_executor
        if executor is None:  # not started (direct use in tests)
            try:
                self._store.save(stored.handle, stored.model, stored.issued_at)
            except OSError as exc:
                logger.warning("resumption handle store: %s", exc)
            return
        self._store_generation += 1
        future = asyncio.get_running_loop().run_in_executor(
            executor, self._save_if_latest, self._store_generation, stored
        )
        self._store_futures.add(future)
        future.add_done_callback(self._store_write_done)

    def _save_if_latest(self, generation: int, stored: StoredHandle) -> None:
        """Runs on the store worker thread."""
        if generation == self._store_generation:
            self._store.save(stored.handle, stored.model, stored.issued_at)

    def _store_write_done(self, future: asyncio.Future[Any]) -> None:
        self._store_futures.discard(future)
        if future.cancelled():
            return
        exc = future.exception()
        if isinstance(exc, OSError):
            logger.warning("resumption handle store: %s", exc)
        elif exc is not None:
            logger.error("resumption handle store failed", exc_info=exc)

    # ---- tools ---------------------------------------------------------------------------

    def _start_tool_call(self, session: Any, call: types.FunctionCall) -> None:
        name = call.name or ""
        args = dict(call.args or {})
        call_id = call.id or f"anon-{id(call)}"
        logger.info("model called tool %s", name)
        self._emit(ToolCalled(name, args, call.id))
        task = asyncio.get_running_loop().create_task(
            self._run_tool(session, call.id, name, args), name=f"live-tool-{name}"
        )
        self._tool_tasks[call_id] = task
        task.add_done_callback(lambda _t, key=call_id: self._tool_tasks.pop(key, None))

    async def _run_tool(
        self, session: Any, call_id: str | None, name: str, args: dict[str, Any]
    ) -> None:
        result = await self._tools.call(name, args)
        response = types.FunctionResponse(id=call_id, name=name, response=result)
        try:
            await session.send_tool_response(function_responses=[response])
        except websockets.ConnectionClosed:
            logger.info("tool %s answered after the connection closed; dropped", name)
        except ValueError as exc:  # e.g. a call without an id
            logger.warning("cannot answer tool call %s: %s", name, exc)

    # ---- failures --------------------------------------------------------------------

    def _failure_from_api_error(self, exc: errors.APIError, conn: _Connection) -> Failure:
        code = exc.code if isinstance(exc.code, int) else None
        return Failure(
            FailureKind.CLOSED if _is_close_code(code) else FailureKind.NETWORK,
            code,
            _api_error_reason(exc),
            during_setup=not conn.setup_done,
            resuming=conn.resuming,
            after_go_away=conn.after_go_away,
        )

    @staticmethod
    def _failure_from_closed(exc: websockets.ConnectionClosed, conn: _Connection) -> Failure:
        if exc.rcvd is not None:
            code, reason = exc.rcvd.code, exc.rcvd.reason
        else:
            code, reason = 1006, "connection closed without a close frame"
        return Failure(
            FailureKind.CLOSED,
            code,
            reason,
            during_setup=not conn.setup_done,
            resuming=conn.resuming,
            after_go_away=conn.after_go_away,
        )

    async def _failed(self, failure: Failure, conn: _Connection) -> None:
        decision = self._policy.failed(failure, self._clock())
        reason = redact(decision.reason)
        abandon = decision.verdict is Verdict.ABANDON_HANDLE
        if abandon:
            # One clear line, instead of the usual "connection lost" warning.
            logger.warning(
                "Gemini Live refused to resume the session %d times since the last good "
                "setup (%s): it still holds the old connection. Dropping the resumption "
                "handle and starting a "
                "fresh session now (the conversation so far is forgotten)",
                BUSY_RESUME_LIMIT,
                reason,
            )
            await self._drop_handle("resume kept being refused", quiet=True)
        elif decision.drop_handle:
            await self._drop_handle("refused by the server")
        if decision.verdict is Verdict.HANDOVER:
            self._handovers += 1
            self._retry_at = self._clock() + decision.delay_s if decision.delay_s > 0 else None
            logger.info("Live connection ended after goAway (%s): resuming", reason)
            return
        self._last_error = reason
        self._retry_at = self._clock() + decision.delay_s
        self._retry_pending = True
        if decision.fatal:
            self._set_state(SessionState.FATAL)
            logger.error(
                "Gemini Live refused the connection: %s. Fix the API key or [gemini] settings "
                "and reload (systemctl reload edge-agent); retrying in %.0f s",
                reason,
                decision.delay_s,
            )
        else:
            self._set_state(SessionState.RETRY_WAIT)
            if not abandon:
                logger.warning(
                    "Live connection lost: %s; retrying in %.1f s", reason, decision.delay_s
                )
        self._emit(SessionLost(reason, fatal=decision.fatal, retry_in_s=decision.delay_s))

    # ---- handle and client -------------------------------------------------------------

    async def _usable_handle(self) -> StoredHandle | None:
        cfg = self._cfg
        if not cfg.session_resumption:
            return None
        if not self._handle_loaded:
            self._handle = await self._in_store_thread(self._store.load, cfg.model)
            self._handle_loaded = True
        handle = self._handle
        if handle is None:
            return None
        age = self._store.age_s(handle)
        if handle.model != cfg.model or not (0 <= age < self._store.validity_s):
            await self._drop_handle(f"expired or for another model (age {age:.0f} s)")
            return None
        return handle

    async def _drop_handle(self, why: str, *, quiet: bool = False) -> None:
        if self._handle is not None and not quiet:
            logger.info("dropping the resumption handle: %s; next session starts fresh", why)
        self._handle = None
        self._handle_loaded = True
        self._store_generation += 1  # a save still queued must not bring it back
        await self._in_store_thread(self._store.clear)

    async def _in_store_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a HandleStore call on its own thread (fsync can take a while on an SD card).

        One worker keeps writes in order; a cancelled caller does not abort a write half way.
        """
        executor = self._store_executor
        if executor is None:  # not started (direct use in tests)
            return fn(*args)
        future = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        self._store_futures.add(future)
        future.add_done_callback(self._store_futures.discard)
        try:
            return await asyncio.shield(future)
        except OSError as exc:
            logger.warning("resumption handle store: %s", exc)
            return None

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

    async def _client_for(self, key: str, cfg: GeminiConfig) -> genai.Client:
        """One SDK client per (key, endpoint) pair: building one costs ~60 ms."""
        cache_key = (
            key,
            cfg.base_url,
            cfg.api_version,
            cfg.ca_file,
            cfg.keepalive_ping_interval_s,
            cfg.keepalive_ping_timeout_s,
        )
        if self._client is None or self._client_key != cache_key:
            await self._drop_client()
            self._client = genai.Client(
                api_key=key, http_options=build_http_options(cfg, ssl_context_for(cfg))
            )
            self._client_key = cache_key
        return self._client

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._client_key = None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aio.aclose()
            with contextlib.suppress(Exception):
                client.close()

    # ---- plumbing --------------------------------------------------------------------

    def _set_state(self, state: SessionState) -> None:
        if state is not self._state:
            logger.debug("live session state %s -> %s", self._state, state)
            self._state = state

    def _emit(self, event: LiveEvent) -> None:
        try:
            self._sink(event)
        except Exception:
            logger.exception("Live event sink failed on %s", type(event).__name__)

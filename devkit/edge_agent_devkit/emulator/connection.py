"""One emulated Live API connection: turn taking, replies, resumption and faults.

Three kinds of task per connection, all owned and cancelled here:
- the reader (`_main`) parses client messages in order and decides turns and interruptions;
- the reply task of the current turn produces server messages into a bounded queue;
- the sender drains the queue onto the socket, applying per-message delay and jitter.
Messages of an interrupted reply are tagged with its generation number and never sent.
The queue holds at most _QUEUE_SIZE messages: producers wait (backpressure), nothing is
dropped except the messages of a reply that was interrupted.

Function calls follow the family of the setup's model. BLOCKING (2.5, 3.1, or a 3.8
declaration with ``behavior: BLOCKING``): the reply waits for the toolResponse and speaks
the result. NON_BLOCKING (3.8 by default): the reply goes on ("Let me check that.") and
ends; the toolResponse is then spoken as a reply of its own, by its scheduling:
WHEN_IDLE (also when absent) once no reply is playing and the user is not mid-turn,
SILENT never, INTERRUPT at once, cutting the reply in progress. A barge-in cancels a
BLOCKING call (toolCallCancellation), not a NON_BLOCKING one: that call belongs to the
conversation, not to the reply that made it (inferred; the docs do not say).

Proactive audio (3.8 always; 2.5 when the setup asks): a turn that the test's rule
(``not_addressed_below_ms`` / ``not_addressed_marker``) says is not meant for the device
is recorded with ``addressed=False`` and gets no reply, only a bare turnComplete.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from . import faults as fk
from . import protocol as proto
from . import voice
from .faults import FaultSpec
from .models import ACCEPT, Family, SetupVerdict, family_of
from .record import (
    ConnectionRecord,
    EmulatorRecord,
    ReplyRecord,
    SessionRecord,
    Snapshot,
    TurnRecord,
)
from .sessions import SessionRegistry
from .vad import EnergyVad

if TYPE_CHECKING:
    from .emulator import EmulatorOptions

logger = logging.getLogger(__name__)

_QUEUE_SIZE = 64
_TOKENS_PER_AUDIO_S = 25
_MAX_REPLY_TEXT = 200
_call_ids = itertools.count(1)


class _PongControlledProtocol(ServerProtocol):
    """ServerProtocol whose automatic pong can be taken over by the connection.

    websockets answers pings inside the sans-I/O protocol (`recv_frame`), below any
    public hook; the real service answers them late (8-30 s were measured), so the
    emulator needs to delay or drop pongs to reproduce keepalive timeouts.
    """

    ping_hook: Callable[[bytes], bool] | None = None

    def recv_frame(self, frame: Frame) -> None:
        hook = self.ping_hook
        if frame.opcode is Opcode.PING and hook is not None and hook(bytes(frame.data)):
            return  # the connection answers later, or never
        super().recv_frame(frame)


class EmulatorServerConnection(ServerConnection):
    """ServerConnection with per-connection pong control and the emulator's bookkeeping."""

    def __init__(self, protocol: ServerProtocol, server: Any, **kwargs: Any) -> None:
        # serve() builds a plain ServerProtocol; give this instance the subclass that lets
        # us intercept pings (same layout, only recv_frame differs).
        protocol.__class__ = _PongControlledProtocol
        super().__init__(protocol, server, **kwargs)
        protocol.ping_hook = self._on_ping
        self.emu_index: int = -1
        self.api_key: str | None = None
        self.pong_mode = "auto"  # "auto", "never", "late"
        self.pong_delay_s = 0.0
        self.pings_received = 0
        self._late_pongs: set[asyncio.TimerHandle] = set()

    def set_pong_mode(self, mode: str, delay_s: float = 0.0) -> None:
        self.pong_mode = mode
        self.pong_delay_s = delay_s

    def _on_ping(self, data: bytes) -> bool:
        self.pings_received += 1
        if self.pong_mode == "auto":
            return False
        if self.pong_mode == "late":
            handle: asyncio.TimerHandle | None = None

            def send_late() -> None:
                self._late_pongs.discard(handle)  # type: ignore[arg-type]
                if self.protocol.state is State.OPEN:
                    self.protocol.send_pong(data)
                    self.send_data()

            handle = self.loop.call_later(self.pong_delay_s, send_late)
            self._late_pongs.add(handle)
        logger.debug("connection %d: ping held back (%s)", self.emu_index, self.pong_mode)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        for handle in self._late_pongs:
            handle.cancel()
        self._late_pongs.clear()
        super().connection_lost(exc)


@dataclass
class _Outgoing:
    """One queued server frame (or a close action) and what to do once it is sent."""

    payload: bytes | str | None
    generation: int | None = None
    audio: bytes | None = None  # modelTurn PCM carried by this message
    model_turn: bool = False
    ends_generation: bool = False
    close: tuple[int, str] | None = None
    on_sent: Callable[[], None] | None = None
    text: bool | None = None  # None: by the payload's type (the raw_frame fault sets it)


class ConnectionHandler:
    """Serves one accepted WebSocket until it closes; see the module docstring."""

    def __init__(
        self,
        ws: EmulatorServerConnection,
        conn_record: ConnectionRecord,
        options: EmulatorOptions,
        record: EmulatorRecord,
        registry: SessionRegistry,
        faults: list[FaultSpec],
        on_change: Callable[[], None],
        rng: random.Random,
        judge_setup: Callable[[dict[str, Any]], SetupVerdict] | None = None,
    ) -> None:
        self.ws = ws
        self.index = conn_record.index
        self.conn = conn_record
        self.opts = options
        self.record = record
        self.registry = registry
        self.faults = list(faults)
        self._on_change = on_change
        self._rng = rng
        self._judge_setup = judge_setup or (lambda _setup: ACCEPT)
        self._queue: asyncio.Queue[_Outgoing] = asyncio.Queue(maxsize=_QUEUE_SIZE)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sender_task: asyncio.Task[None] | None = None
        self._reply_task: asyncio.Task[None] | None = None
        self._close_started = False
        self._delay_s = options.message_delay_s
        self._jitter_s = options.message_jitter_s
        # setup-derived state
        self._setup: dict[str, Any] | None = None
        self._session: SessionRecord | None = None
        self._is_open_fn: Callable[[], bool] = self._holds_session
        self._held_until: float | None = None  # vanish: monotonic time the server notices
        self._resumption = False
        self._vad: EnergyVad | None = None  # None = server VAD disabled
        self._interrupts = True
        self._text_mode = False
        self._input_transcription = False
        self._output_transcription = False
        self._functions: list[str] = []
        self._non_blocking: set[str] = set()  # functions called NON_BLOCKING
        self._proactive = False
        # turn state
        self._in_activity = False
        self._turn_audio_bytes = 0
        self._turn_audio_s = 0.0
        self._turn_texts: list[str] = []
        self._content_texts: list[str] = []
        # reply state
        self._generation = 0
        self._active_generation: int | None = None
        self._active_reply: ReplyRecord | None = None
        self._active_snapshot: Snapshot | None = None
        self._active_turn: TurnRecord | None = None
        self._cancelled: set[int] = set()
        self._replies: dict[int, ReplyRecord] = {}
        self._tool_waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._async_calls: dict[str, dict[str, Any]] = {}  # NON_BLOCKING, unanswered
        self._idle_answers: list[dict[str, Any]] = []  # WHEN_IDLE answers not yet spoken
        # faults waiting for their trigger
        self._after_setup: list[FaultSpec] = []
        self._after_messages: list[tuple[int, FaultSpec]] = []
        self._mid_reply: list[FaultSpec] = []
        self._never_setup = False
        self._force_bad_key = False
        self._force_missing_key = False

    # ---- lifecycle ----

    def is_open(self) -> bool:
        return self.ws.protocol.state is State.OPEN and not self._close_started

    def _holds_session(self) -> bool:
        """What the registry asks: open, or vanished and not yet noticed (fault `vanish`)."""
        held = self._held_until is not None and time.monotonic() < self._held_until
        return held or self.is_open()

    async def run(self) -> None:
        """Serve until the connection ends; every child task is cancelled on the way out."""
        self._sender_task = self._spawn(self._sender_loop(), "sender")
        main = self._spawn(self._main_guarded(), "reader")
        try:
            await asyncio.wait({self._sender_task, main}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Bookkeeping first, without awaiting: stop() may cancel this task again while
            # it waits for its children below.
            children = self._cancel_children()
            if self._session is not None and not self._holds_session():
                self.registry.detach(self._session, self._is_open_fn)
            self._finish_close_record()
            self._on_change()
            if children:
                await asyncio.gather(*children, return_exceptions=True)

    async def shutdown(self) -> None:
        """Close with 1001 (the emulator is stopping)."""
        await self._close(proto.CLOSE_GOING_AWAY, "Emulator shutting down.")

    def inject(self, spec: FaultSpec) -> None:
        """Apply a fault to this live connection, timed relative to now."""
        if spec.kind in fk.CONNECTION_KINDS:
            logger.warning("fault %s only applies through connection_faults; ignored", spec.kind)
            return
        if spec.at_s is not None:
            self._spawn(self._fire_later(spec, spec.at_s), f"fault-{spec.kind}")
        elif spec.after_messages is not None:
            self._after_messages.append((self.conn.messages_received + spec.after_messages, spec))
        elif spec.param("mid_reply"):
            self._mid_reply.append(spec)
        else:
            self._spawn(self._fire_safely(spec), f"fault-{spec.kind}")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"emu-conn{self.index}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _cancel_children(self) -> list[asyncio.Task[Any]]:
        children = [t for t in (*self._tasks, self._reply_task) if t is not None and not t.done()]
        for task in children:
            task.cancel()
        for fut in self._tool_waiters.values():
            fut.cancel()
        return children

    def _finish_close_record(self) -> None:
        if self.conn.close_code is not None or self.conn.closed_by is not None:
            return
        rcvd = self.ws.protocol.close_rcvd
        if rcvd is not None:
            self.conn.close_code, self.conn.close_reason = rcvd.code, rcvd.reason
            self.conn.closed_by = "client"
        else:
            self.conn.close_code, self.conn.close_reason = 1006, ""
            self.conn.closed_by = "abort"

    async def _close(self, code: int, reason: str) -> None:
        if self._close_started:
            return
        self._close_started = True
        if self.ws.protocol.state is not State.OPEN:
            return  # the client closed first; _finish_close_record records its code
        self.conn.close_code, self.conn.close_reason = code, proto.close_reason(reason)
        self.conn.closed_by = "server"
        logger.info("connection %d: closing %d %s", self.index, code, reason)
        if self._reply_task is not None and self._reply_task is not asyncio.current_task():
            self._reply_task.cancel()
        self._on_change()
        await self.ws.close(code, proto.close_reason(reason))

    def _abort(self) -> None:
        if self._close_started:
            return
        self._close_started = True
        self.conn.close_code, self.conn.close_reason, self.conn.closed_by = 1006, "", "abort"
        logger.info("connection %d: dropping TCP without a close frame", self.index)
        if self._reply_task is not None and self._reply_task is not asyncio.current_task():
            self._reply_task.cancel()
        self._on_change()
        self.ws.transport.abort()

    # ---- reader ----

    async def _main_guarded(self) -> None:
        try:
            await self._main()
        except proto.ProtocolError as exc:
            logger.info("connection %d: refusing client input: %s", self.index, exc)
            await self._close(exc.code, exc.reason)
        except ConnectionClosed:
            pass
        except Exception:
            logger.exception("connection %d: emulator bug; closing 1011", self.index)
            await self._close(proto.CLOSE_INTERNAL, proto.REASON_INTERNAL)

    async def _main(self) -> None:
        self._arm_connection_faults()
        try:
            first = await asyncio.wait_for(self.ws.recv(), self.opts.first_message_timeout_s)
        except TimeoutError:
            await self._close(proto.CLOSE_INTERNAL, proto.REASON_DEADLINE)
            return
        message, error = self._parse_and_record(first)
        key = self.ws.api_key
        if self._force_missing_key or not key:
            await self._close(proto.CLOSE_POLICY, proto.REASON_MISSING_KEY)
            return
        if self._force_bad_key or key not in self.opts.valid_api_keys:
            await self._close(proto.CLOSE_INVALID_ARGUMENT, proto.REASON_BAD_KEY)
            return
        if error is not None:
            raise error
        assert message is not None
        if "setup" not in message:
            raise proto.ProtocolError(proto.CLOSE_INVALID_ARGUMENT, proto.REASON_SETUP_FIRST)
        verdict = self._judge_setup(message["setup"])
        self.conn.model = str(message["setup"].get("model", "")).removeprefix("models/")
        if verdict.close is not None:
            raise proto.ProtocolError(*verdict.close)
        if self._never_setup or verdict.hang:
            why = "fault" if self._never_setup else f"{self.conn.model} rules"
            logger.info("connection %d: never answering setup (%s)", self.index, why)
            while True:
                self._parse_and_record(await self.ws.recv())
        await self._handle_setup(message["setup"])
        await self._after_message_count()
        while True:
            raw = await self.ws.recv()
            message, error = self._parse_and_record(raw)
            if error is not None:
                raise error
            assert message is not None
            await self._dispatch(message)
            await self._after_message_count()

    def _parse_and_record(
        self, raw: str | bytes
    ) -> tuple[dict[str, Any] | None, proto.ProtocolError | None]:
        self.conn.messages_received += 1
        try:
            message = proto.parse_client_message(raw)
        except proto.ProtocolError as exc:
            self.record.add_message(self.index, {"invalid": _raw_preview(raw)})
            self._on_change()
            return None, exc
        self.record.add_message(self.index, message)
        self._on_change()
        return message, None

    async def _after_message_count(self) -> None:
        due = [s for n, s in self._after_messages if self.conn.messages_received >= n]
        if not due:
            return
        self._after_messages = [
            (n, s) for n, s in self._after_messages if self.conn.messages_received < n
        ]
        for spec in due:
            await self._fire(spec)

    async def _handle_setup(self, setup: dict[str, Any]) -> None:
        self._setup = setup
        model = setup.get("model")
        if not isinstance(model, str) or not model:
            raise proto.ProtocolError(
                proto.CLOSE_INVALID_ARGUMENT, "Invalid argument: setup.model is required."
            )
        resumption = setup.get("sessionResumption")
        self._resumption = isinstance(resumption, dict)
        handle = None
        if isinstance(resumption, dict):
            if resumption.get("transparent"):
                raise proto.ProtocolError(proto.CLOSE_INVALID_ARGUMENT, proto.REASON_TRANSPARENT)
            handle = resumption.get("handle") or None
        if handle is not None:
            self.conn.resumed_from_handle = str(handle)
            session, snapshot = self.registry.resolve(str(handle))
            self.registry.attach(session, self._is_open_fn)
            session.restore(snapshot)
            self.conn.resumed = True
            logger.info(
                "connection %d: resumed %s at %d audio bytes, %d turns",
                self.index,
                session.session_id,
                snapshot.audio_len,
                snapshot.turn_count,
            )
        else:
            session = self.registry.new_session()
            self.registry.attach(session, self._is_open_fn)
        session.connections += 1
        self._session = session
        self.conn.session_id = session.session_id
        self.registry.configure_compression(session, setup.get("contextWindowCompression"))

        ric = setup.get("realtimeInputConfig") or {}
        aad = ric.get("automaticActivityDetection") or {}
        if not aad.get("disabled"):
            silence_ms = int(aad.get("silenceDurationMs") or self.opts.vad_silence_ms)
            self._vad = EnergyVad(
                threshold_dbfs=self.opts.vad_threshold_dbfs,
                min_speech_ms=self.opts.vad_min_speech_ms,
                silence_ms=silence_ms,
            )
        self._interrupts = ric.get("activityHandling") != "NO_INTERRUPTION"
        modalities = [
            str(m).upper()
            for m in (setup.get("generationConfig") or {}).get("responseModalities") or []
        ]
        self._text_mode = "TEXT" in modalities and "AUDIO" not in modalities
        self._input_transcription = isinstance(setup.get("inputAudioTranscription"), dict)
        self._output_transcription = isinstance(setup.get("outputAudioTranscription"), dict)
        declared = proto.declared_function_names(setup)
        allowed = set(self.opts.tools)
        self._functions = [n for n in declared if not allowed or n in allowed]
        family = family_of(model)
        if family in (Family.LIVE_3_8, Family.LIVE_3_8_EXTENDED):
            behaviors = proto.declared_function_behaviors(setup)
            self._non_blocking = {n for n in declared if behaviors.get(n) != "BLOCKING"}
            self._proactive = True
        elif family is Family.NATIVE_AUDIO_2_5:
            proactivity = setup.get("proactivity")
            self._proactive = isinstance(proactivity, dict) and bool(
                proactivity.get("proactiveAudio")
            )

        if self.opts.setup_delay_s > 0:
            await asyncio.sleep(self.opts.setup_delay_s)
        await self._put(_Outgoing(proto.encode(proto.setup_complete()), on_sent=self._setup_sent))
        if self._resumption:
            handle_now = self.registry.issue_handle(session, session.snapshot())
            await self._put(_Outgoing(proto.encode(proto.resumption_update(handle_now))))
        for spec in self._after_setup:
            if spec.at_s is not None:
                self._spawn(self._fire_later(spec, spec.at_s), f"fault-{spec.kind}")
            else:
                await self._fire(spec)
        self._after_setup.clear()

    def _setup_sent(self) -> None:
        self.conn.setup_complete_sent = True
        self._on_change()
        self._arm_lifetimes()

    def _arm_lifetimes(self) -> None:
        """The scheduled goAway and the session limit (EmulatorOptions; soaks shorten them)."""
        if self.opts.go_away_after_s is not None:
            spec = FaultSpec(fk.GO_AWAY, time_left_s=self.opts.go_away_time_left_s)
            self._spawn(self._fire_later(spec, self.opts.go_away_after_s), "lifetime-go-away")
        left = None if self._session is None else self.registry.session_time_left(self._session)
        if left is not None:
            self._spawn(self._end_session_later(max(0.0, left)), "session-limit")

    async def _end_session_later(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        assert self._session is not None
        self.registry.end_session(self._session)
        await self._close(proto.CLOSE_INTERNAL, proto.REASON_DEADLINE)

    # ---- client messages ----

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind, body = next(iter(message.items()))
        if kind == "setup":
            raise proto.ProtocolError(proto.CLOSE_INVALID_ARGUMENT, proto.REASON_SECOND_SETUP)
        if kind == "realtimeInput":
            await self._on_realtime(body)
        elif kind == "clientContent":
            await self._on_client_content(body)
        elif kind == "toolResponse":
            await self._on_tool_response(body)

    async def _on_realtime(self, body: dict[str, Any]) -> None:
        if "mediaChunks" in body:
            raise proto.ProtocolError(proto.CLOSE_INVALID_ARGUMENT, proto.REASON_MEDIA_CHUNKS)
        explicit = "activityStart" in body or "activityEnd" in body
        if explicit and self._vad is not None:
            raise proto.ProtocolError(proto.CLOSE_INVALID_ARGUMENT, proto.REASON_ACTIVITY_WITH_VAD)
        if "activityStart" in body:
            await self._user_activity()
            self._in_activity = True
            self._reset_turn()
        if "audio" in body:
            pcm, mime = proto.decode_blob(body["audio"], "realtime_input.audio")
            await self._on_audio(pcm, proto.pcm_rate_hz(mime))
        if "video" in body:
            proto.decode_blob(body["video"], "realtime_input.video")  # validated, not used
        if "text" in body:
            text = str(body["text"])
            if self._vad is None and self._in_activity:
                self._turn_texts.append(text)
            else:
                await self._user_activity()
                await self._end_turn("text", "text", text=text)
        if "activityEnd" in body and self._in_activity:
            self._in_activity = False
            texts = " ".join(self._turn_texts)
            kind = "audio" if self._turn_audio_bytes or not texts else "text"
            await self._end_turn(kind, "activityEnd", text=texts, speech_s=self._turn_audio_s)
        if body.get("audioStreamEnd") and self._vad is not None:
            if self._vad.in_speech:
                speech_s = self._vad.speech_seconds()
                self._vad.reset()
                await self._end_turn("audio", "audioStreamEnd", speech_s=speech_s)
            else:
                self._vad.reset()

    async def _on_audio(self, pcm: bytes, rate_hz: int) -> None:
        assert self._session is not None
        if self._vad is None:
            if not self._in_activity:
                logger.debug("connection %d: %d audio bytes outside activity", self.index, len(pcm))
                return
            self._session.append_audio(pcm)
            self._turn_audio_bytes += len(pcm)
            self._turn_audio_s += len(pcm) / 2 / rate_hz
            self._on_change()
            return
        # Server VAD: everything is consumed; the energy detector decides the turns.
        self._session.append_audio(pcm)
        self._turn_audio_bytes += len(pcm)
        self._on_change()
        for event in self._vad.feed(pcm):
            if event.kind == "start":
                await self._user_activity()
            else:
                await self._end_turn("audio", "vad", speech_s=self._vad.speech_seconds())

    async def _on_client_content(self, body: dict[str, Any]) -> None:
        await self._user_activity()
        text = proto.content_text(body.get("turns"))
        if text:
            self._content_texts.append(text)
        if body.get("turnComplete"):
            full = " ".join(self._content_texts)
            self._content_texts = []
            await self._end_turn("text", "turnComplete", text=full)

    async def _on_tool_response(self, body: dict[str, Any]) -> None:
        for response in body.get("functionResponses") or []:
            call_id = response.get("id") if isinstance(response, dict) else None
            waiter = self._tool_waiters.pop(str(call_id), None)
            entry = self._async_calls.pop(str(call_id), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(response)
            elif entry is not None:
                await self._async_answer(entry, response)
            else:
                logger.info("connection %d: toolResponse for unknown id %r", self.index, call_id)

    async def _async_answer(self, entry: dict[str, Any], response: dict[str, Any]) -> None:
        """A NON_BLOCKING call answered: speak it as its scheduling says."""
        scheduling = str(response.get("scheduling") or "WHEN_IDLE").upper()
        entry["response"] = response.get("response")
        entry["scheduling"] = scheduling
        entry["spoken"] = False
        self._on_change()
        if scheduling == "SILENT":
            return
        if scheduling == "INTERRUPT":
            await self._user_activity()  # the answer cuts the reply in progress
            self._start_answer_reply(entry)
        elif self._idle():
            self._start_answer_reply(entry)
        else:
            self._idle_answers.append(entry)

    def _idle(self) -> bool:
        """Nobody is talking: no reply in progress, no user turn open."""
        user_talking = self._in_activity or (self._vad is not None and self._vad.in_speech)
        return self._active_generation is None and not user_talking

    def _speak_idle_answers(self) -> None:
        if self._idle_answers and self._idle():
            self._start_answer_reply(self._idle_answers.pop(0))

    def _start_answer_reply(self, entry: dict[str, Any]) -> None:
        assert self._session is not None
        entry["spoken"] = True
        self._generation += 1
        generation = self._generation
        reply = ReplyRecord(
            connection_index=self.index,
            turn_index=-1,
            answers_call=str(entry["id"]),
            scheduling=str(entry.get("scheduling")),
        )
        self.record.add_reply(reply)
        self._replies[generation] = reply
        self._active_generation = generation
        self._active_reply, self._active_turn = reply, None
        self._active_snapshot = self._session.snapshot()
        text = f"The {entry['name']} tool returned {_summary(entry.get('response'))}."
        self._reply_task = self._spawn(
            self._speak(generation, text, reply, 0, self._active_snapshot), f"answer{generation}"
        )
        self._on_change()

    def _reset_turn(self) -> None:
        self._turn_audio_bytes = 0
        self._turn_audio_s = 0.0
        self._turn_texts = []

    # ---- turns and replies ----

    async def _user_activity(self) -> None:
        """New user input began: interrupt the reply in progress (unless NO_INTERRUPTION)."""
        if self._interrupts and self._active_generation is not None:
            await self._interrupt()

    async def _end_turn(
        self, kind: str, ended_by: str, *, text: str = "", speech_s: float = 0.0
    ) -> None:
        session = self._session
        assert session is not None
        if kind == "audio":
            transcript = f"({speech_s:.1f} s of speech)"
            if text:
                transcript = f"{transcript} {text}"
        else:
            transcript = text
        turn = TurnRecord(
            index=len(session.turns),
            connection_index=self.index,
            kind=kind,
            audio_bytes=self._turn_audio_bytes,
            transcript=transcript,
            ended_by=ended_by,
            speech_s=round(speech_s, 3),
        )
        session.turns.append(turn)
        snapshot = session.snapshot()
        self._reset_turn()
        if self._proactive and not self._addressed(kind, text, speech_s):
            turn.addressed = False
            logger.debug("connection %d: turn %d not addressed; no reply", self.index, turn.index)
            if self._input_transcription:
                await self._put(_Outgoing(proto.encode(proto.input_transcription(transcript))))
            await self._put(_Outgoing(proto.encode(proto.turn_complete(0, 0))))
            if self._resumption:
                handle = self.registry.issue_handle(session, snapshot)
                await self._put(_Outgoing(proto.encode(proto.resumption_update(handle))))
            self._speak_idle_answers()
            self._on_change()
            return
        self._generation += 1
        generation = self._generation
        reply = ReplyRecord(connection_index=self.index, turn_index=turn.index)
        self.record.add_reply(reply)
        self._replies[generation] = reply
        previous = self._reply_task
        self._active_generation = generation
        self._active_reply, self._active_snapshot, self._active_turn = reply, snapshot, turn
        self._reply_task = self._spawn(
            self._reply(generation, turn, text, snapshot, reply, previous), f"reply{generation}"
        )
        logger.debug("connection %d: turn %d ended by %s", self.index, turn.index, ended_by)
        self._on_change()

    def _addressed(self, kind: str, text: str, speech_s: float) -> bool:
        """The test's rule for what proactive audio treats as not meant for the device."""
        marker = self.opts.not_addressed_marker
        if marker and marker in text:
            return False
        return not (kind == "audio" and speech_s * 1000 < self.opts.not_addressed_below_ms)

    async def _reply(
        self,
        generation: int,
        turn: TurnRecord,
        text: str,
        snapshot: Snapshot,
        reply: ReplyRecord,
        previous: asyncio.Task[None] | None,
    ) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait({previous})  # NO_INTERRUPTION: replies queue up
        g = generation
        if self._resumption:
            await self._put(_Outgoing(proto.encode(proto.resumption_update(None)), g))
        if self._input_transcription:
            await self._put(_Outgoing(proto.encode(proto.input_transcription(turn.transcript)), g))
        reply_text = self._base_reply_text(turn, text)
        call = self._choose_tool(turn, text)
        if call is not None and call[0] in self._non_blocking:
            reply_text = await self._start_async_call(g, reply, *call)
        elif call is not None:
            reply_text = await self._run_tool_call(g, reply, *call)
        prompt_tokens = round(turn.speech_s * _TOKENS_PER_AUDIO_S) + len(turn.transcript.split())
        await self._speak(g, reply_text, reply, prompt_tokens, snapshot, resumption_open=False)

    async def _speak(
        self,
        g: int,
        reply_text: str,
        reply: ReplyRecord,
        prompt_tokens: int,
        snapshot: Snapshot,
        *,
        resumption_open: bool = True,
    ) -> None:
        """Stream one reply: (handle {}), audio or text, generationComplete, turnComplete,
        then the post-turn handle."""
        if resumption_open and self._resumption:
            await self._put(_Outgoing(proto.encode(proto.resumption_update(None)), g))
        reply.text = reply_text
        response_s = 0.0
        if self._text_mode:
            for piece in voice.transcript_pieces(reply_text):
                await self._put(_Outgoing(proto.encode(proto.text_part(piece)), g, model_turn=True))
        else:
            response_s = await self._stream_audio(g, reply_text)
        await self._put(_Outgoing(proto.encode(proto.generation_complete()), g))
        response_tokens = round(response_s * _TOKENS_PER_AUDIO_S) or len(reply_text.split())
        await self._put(
            _Outgoing(
                proto.encode(proto.turn_complete(prompt_tokens, response_tokens)),
                g,
                ends_generation=True,
            )
        )
        if self._session is not None:
            tokens = prompt_tokens + response_tokens + self.opts.turn_context_tokens
            self.registry.add_context_tokens(self._session, tokens)
        if self._resumption:
            assert self._session is not None
            handle = self.registry.issue_handle(self._session, snapshot)
            await self._put(_Outgoing(proto.encode(proto.resumption_update(handle)), g))

    async def _stream_audio(self, g: int, reply_text: str) -> float:
        """Queue the reply audio in paced chunks with transcription pieces; returns seconds."""
        opts = self.opts
        if opts.reply_audio_pcm is not None:
            pcm = opts.reply_audio_pcm
        else:
            pcm = await voice.render(
                reply_text, voice=opts.voice, speed_wpm=opts.speech_wpm, espeak=opts.espeak
            )
        chunks = voice.split_chunks(pcm, opts.reply_chunk_ms)
        pieces: list[list[str]] = [[] for _ in chunks]
        if self._output_transcription:
            pieces = voice.spread(voice.transcript_pieces(reply_text), len(chunks))
        loop = asyncio.get_running_loop()
        start = loop.time()
        offset_s = 0.0
        for chunk, chunk_pieces in zip(chunks, pieces, strict=False):
            if opts.pace > 0:
                wait = start + offset_s / opts.pace - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            await self._put(
                _Outgoing(proto.encode(proto.audio_part(chunk)), g, audio=chunk, model_turn=True)
            )
            for piece in chunk_pieces:
                await self._put(_Outgoing(proto.encode(proto.output_transcription(piece)), g))
            offset_s += len(chunk) / 2 / proto.AUDIO_OUT_RATE_HZ
        return offset_s

    def _base_reply_text(self, turn: TurnRecord, text: str) -> str:
        if self.opts.reply_text is not None:
            return self.opts.reply_text
        if turn.kind == "audio":
            return f"You spoke for {turn.speech_s:.1f} seconds."
        said = " ".join(text.split())[:_MAX_REPLY_TEXT]
        return f"You said: {said}." if said else "You said nothing."

    def _choose_tool(self, turn: TurnRecord, text: str) -> tuple[str, dict[str, Any]] | None:
        if not self._functions:
            return None
        if self.opts.tool_turns and turn.index not in self.opts.tool_turns:
            return None
        lowered = f"{text} {turn.transcript}".lower()
        chosen = None
        for name in self._functions:
            if name.lower() in lowered or name.lower().replace("_", " ") in lowered:
                chosen = name
                break
        if chosen is None and (self.opts.force_tool_call or "tool" in lowered.split()):
            chosen = self._functions[0]
        if chosen is None:
            return None
        return chosen, dict(self.opts.tool_args.get(chosen, {}))

    async def _start_async_call(
        self, g: int, reply: ReplyRecord, name: str, args: dict[str, Any]
    ) -> str:
        """A NON_BLOCKING call: issue it and go on talking; the answer comes later."""
        call_id = f"function-call-{next(_call_ids)}-{self._rng.randrange(10**9)}"
        entry: dict[str, Any] = {"id": call_id, "name": name, "args": args}
        entry["behavior"] = "NON_BLOCKING"
        reply.tool_calls.append(entry)
        await self._put(_Outgoing(proto.encode(proto.tool_call(call_id, name, args)), g))
        if self.opts.cancel_tool_calls:
            await self._put(_Outgoing(proto.encode(proto.tool_call_cancellation([call_id])), g))
            entry["cancelled"] = True
            return f"The {name} call was cancelled."
        self._async_calls[call_id] = entry
        return self.opts.reply_text or "Let me check that."

    async def _cancel_tool_calls(self, *, direct: bool) -> None:
        """Fault: cancel every call this connection issued that is still unanswered."""
        ids = [*self._tool_waiters, *self._async_calls]
        for call_id, entry in list(self._async_calls.items()):
            entry["cancelled"] = True
            self._async_calls.pop(call_id)
        for waiter in self._tool_waiters.values():
            if not waiter.done():
                waiter.set_result({"cancelled": True})
        self._tool_waiters.clear()
        if ids:
            await self._emit(proto.encode(proto.tool_call_cancellation(ids)), direct=direct)

    async def _run_tool_call(
        self, g: int, reply: ReplyRecord, name: str, args: dict[str, Any]
    ) -> str:
        call_id = f"function-call-{next(_call_ids)}-{self._rng.randrange(10**9)}"
        reply.tool_calls.append({"id": call_id, "name": name, "args": args})
        await self._put(_Outgoing(proto.encode(proto.tool_call(call_id, name, args)), g))
        if self.opts.cancel_tool_calls:
            await self._put(_Outgoing(proto.encode(proto.tool_call_cancellation([call_id])), g))
            reply.tool_calls[-1]["cancelled"] = True
            return f"The {name} call was cancelled."
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._tool_waiters[call_id] = waiter
        try:
            response = await waiter
        finally:
            self._tool_waiters.pop(call_id, None)
        if response.get("cancelled") is True:
            reply.tool_calls[-1]["cancelled"] = True
            return f"The {name} call was cancelled."
        result = response.get("response")
        reply.tool_calls[-1]["response"] = result
        return f"The {name} tool returned {_summary(result)}."

    async def _interrupt(self) -> None:
        g = self._active_generation
        if g is None:
            return
        self._active_generation = None
        self._cancelled.add(g)
        if self._reply_task is not None and not self._reply_task.done():
            self._reply_task.cancel()
        self._purge_queue()
        pending = list(self._tool_waiters)
        for waiter in self._tool_waiters.values():
            waiter.cancel()
        self._tool_waiters.clear()
        if self._active_reply is not None:
            self._active_reply.interrupted = True
        self._replies.pop(g, None)
        logger.debug("connection %d: reply %d interrupted", self.index, g)
        if pending:
            await self._put(_Outgoing(proto.encode(proto.tool_call_cancellation(pending))))
        await self._put(_Outgoing(proto.encode(proto.interrupted())))
        turn = self._active_turn
        prompt_tokens = 0 if turn is None else round(turn.speech_s * _TOKENS_PER_AUDIO_S)
        await self._put(_Outgoing(proto.encode(proto.turn_complete(prompt_tokens, 0))))
        if self._resumption and self._session is not None and self._active_snapshot is not None:
            handle = self.registry.issue_handle(self._session, self._active_snapshot)
            await self._put(_Outgoing(proto.encode(proto.resumption_update(handle))))
        self._on_change()

    # ---- sender ----

    async def _put(self, item: _Outgoing) -> None:
        await self._queue.put(item)

    def _purge_queue(self) -> None:
        keep: list[_Outgoing] = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item.generation is None or item.generation not in self._cancelled:
                keep.append(item)
        for item in keep:
            self._queue.put_nowait(item)

    def _stale(self, item: _Outgoing) -> bool:
        return item.generation is not None and item.generation in self._cancelled

    def _next_delay(self) -> float:
        if self._jitter_s > 0:
            return max(0.0, self._delay_s + self._rng.uniform(-self._jitter_s, self._jitter_s))
        return self._delay_s

    async def _sender_loop(self) -> None:
        try:
            while True:
                item = await self._queue.get()
                if self._stale(item):
                    continue
                delay = self._next_delay()
                if delay > 0:
                    await asyncio.sleep(delay)
                    if self._stale(item):
                        continue
                if item.close is not None:
                    await self._close(*item.close)
                    return
                assert item.payload is not None
                await self.ws.send(item.payload, text=item.text)
                await self._after_sent(item)
                if self._close_started:
                    return
                if self._queue.empty():
                    self._cancelled.clear()  # nothing tagged is left to skip
        except ConnectionClosed:
            pass

    async def _after_sent(self, item: _Outgoing) -> None:
        if item.on_sent is not None:
            item.on_sent()
        g = item.generation
        reply = self._replies.get(g) if g is not None else None
        if reply is not None and item.model_turn:
            if item.audio is not None:
                reply.audio += item.audio
                reply.audio_len += len(item.audio)
            reply.chunks_sent += 1
            self._on_change()
            due = [s for s in self._mid_reply if reply.chunks_sent >= int(_after_chunks(s))]
            if due:
                self._mid_reply = [s for s in self._mid_reply if s not in due]
                for spec in due:
                    await self._fire(spec, direct=True)
        if item.ends_generation and g is not None:
            if reply is not None and not reply.interrupted:
                reply.completed = True
            if self._active_generation == g:
                self._active_generation = None
            self._replies.pop(g, None)
            self._speak_idle_answers()
            self._on_change()

    # ---- faults ----

    def _arm_connection_faults(self) -> None:
        for spec in self.faults:
            kind = spec.kind
            if kind == fk.NEVER_SETUP:
                self._never_setup = True
            elif kind == fk.BAD_KEY:
                self._force_bad_key = True
            elif kind == fk.MISSING_KEY:
                self._force_missing_key = True
            elif kind == fk.HTTP_STATUS:
                pass  # handled during the HTTP upgrade
            elif _mid_reply(spec, default=kind in fk.MID_REPLY_DEFAULT_KINDS):
                self._mid_reply.append(spec)
            elif spec.after_messages is not None:
                self._after_messages.append((spec.after_messages, spec))
            elif spec.at_s is not None or kind in fk.ACTION_KINDS:
                self._after_setup.append(spec)
            else:  # behaviours without timing hold from the first byte
                self.conn.faults.append(kind)
                self._apply_behaviour(spec)

    async def _fire_later(self, spec: FaultSpec, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await self._fire_safely(spec)

    async def _fire_safely(self, spec: FaultSpec) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._fire(spec)

    async def _fire(self, spec: FaultSpec, *, direct: bool = False) -> None:
        """Make `spec` happen now. `direct` = called from the sender (bypass the queue)."""
        if self._close_started:
            return
        self.conn.faults.append(spec.kind)
        logger.info("connection %d: fault %s", self.index, spec.kind)
        self._on_change()
        kind = spec.kind
        if kind in fk.BEHAVIOUR_KINDS:
            self._apply_behaviour(spec)
        elif kind == fk.CLOSE_1011:
            await self._close(proto.CLOSE_INTERNAL, str(spec.param("reason")))
        elif kind == fk.DROP_TCP:
            self._abort()
        elif kind == fk.VANISH:
            self._held_until = time.monotonic() + float(spec.param("hold_s"))
            self._abort()
        elif kind == fk.GO_AWAY:
            time_left = float(spec.param("time_left_s"))

            def start_countdown() -> None:
                close = (proto.CLOSE_POLICY, proto.REASON_ABORTED)
                self._spawn(self._close_later(close, time_left), "go-away-close")

            payload = proto.encode(proto.go_away(time_left))
            await self._emit(payload, direct=direct, on_sent=start_countdown)
        elif kind == fk.BAD_FRAME:
            data = spec.param("data")
            payload = data.encode() if isinstance(data, str) else (data or proto.BAD_FRAME)
            await self._emit(payload, direct=direct)
        elif kind == fk.UNKNOWN_MESSAGE:
            await self._emit(proto.encode(proto.UNKNOWN_MESSAGE), direct=direct)
        elif kind == fk.RAW_FRAME:
            text = bool(spec.param("text"))
            await self._emit(spec.param("data"), direct=direct, text=text)
        elif kind == fk.CANCEL_TOOL_CALLS:
            await self._cancel_tool_calls(direct=direct)

    async def _emit(
        self,
        payload: bytes | str,
        *,
        direct: bool,
        on_sent: Callable[[], None] | None = None,
        text: bool | None = None,
    ) -> None:
        if direct:
            await self.ws.send(payload, text=text)
            if on_sent is not None:
                on_sent()
        else:
            await self._put(_Outgoing(payload, on_sent=on_sent, text=text))

    async def _close_later(self, close: tuple[int, str], delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await self._close(*close)

    def _apply_behaviour(self, spec: FaultSpec) -> None:
        if spec.kind == fk.NO_PONG:
            self.ws.set_pong_mode("never")
        elif spec.kind == fk.LATE_PONG:
            self.ws.set_pong_mode("late", float(spec.param("delay_s")))
        elif spec.kind == fk.DELAY:
            self._delay_s = float(spec.param("delay_s"))
            self._jitter_s = float(spec.param("jitter_s"))


def _mid_reply(spec: FaultSpec, *, default: bool) -> bool:
    explicit = spec.param("mid_reply")
    if explicit is not None:
        return bool(explicit)
    return default and not spec.is_timed()


def _after_chunks(spec: FaultSpec) -> int:
    value = spec.params.get("after_chunks", 2)
    return max(1, int(value))


def _summary(result: Any) -> str:
    text = json.dumps(result, separators=(", ", ": "), sort_keys=True, default=str)
    return text[:_MAX_REPLY_TEXT]


def _raw_preview(raw: str | bytes, limit: int = 200) -> str:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    return raw[:limit]

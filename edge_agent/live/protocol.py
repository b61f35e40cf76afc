"""The Live session's protocol core: every decision the session makes, and no I/O.

Sans-I/O in the manner of the ``websockets`` library: no asyncio, no sockets, no SDK
calls, times passed in. ``live.session.LiveSession`` is the asyncio adapter around it:
it connects, runs the tasks, and moves messages between the SDK and this core. Server
messages come in as google-genai's parsed ``types.LiveServerMessage`` (plain data: the
SDK parses, this core only reads fields); events go out as ``core.events`` types.
Two clocks: ``now`` is the reconnect policy's clock (tests fast-forward it);
``loop_now`` is the event loop's, for the goAway deadline the adapter waits on.

Uplink and turn accounting: ``send_audio`` & co. append to ``core.replay.ReplayLog``,
which is both the offline buffer (speech while connecting is sent after setup) and the
replay log (after a drop or a handover, whatever the last resumption handle does not
cover is sent again first, then the buffered audio). So not one sample of the user's
speech is lost across a drop or a handover, as long as the gap fits in
``replay_buffer_max_s``. Refused handle -> fresh session: only the turns that were never
answered are re-sent (see ``ReplayLog.rewind_for_fresh_session``).

goAway (``connection_end``): keep serving until every sent turn is answered, no reply is
streaming and a handle after the last answer has arrived (the reply being played is not
cut), or until ``timeLeft`` minus a margin, whichever first; then the adapter closes the
old connection (resuming while it is open gets 1011) and resumes. "No reply is
streaming" matters with the server's VAD: the server ends the turn itself, so no marker
of ours is owed while it answers.

Resume refused with 1011 (the server still holds the old connection, e.g. after a Wi-Fi
roam): retried with backoff, and after ``BUSY_RESUME_LIMIT`` refusals the handle is
dropped for a fresh session (counted by ``core.backoff.ReconnectPolicy``).

Unreadable server frames cost one message each (the adapter explains why that is safe
with google-genai); ``MAX_BAD_FRAMES_IN_A_ROW`` in a row count as a protocol failure and
reconnect with backoff.

Barge-in (``interrupt``): with client-side turn marking it opens the user's turn with
``activityStart``: the server answers ``interrupted`` and waits for the user's words.
The daemon then streams audio and ends the turn with ``activity_end()`` as usual. With
the server's own VAD, ``activityStart`` is not allowed: the server cuts its reply when
its VAD hears speech. Whether the rest of the interrupted reply is stale is decided in
one place, the conversation machine (``core.state``, ``policy.reply_audio_stale``): this
core reports every server event as it is, and its turn accounting needs no
suppression (an interrupted reply still ends with a turnComplete, which answers the turn).

Known limits (inherent to handles without ``transparent``):
- A turn whose answer arrived but whose handle did not (drop in between) is forgotten by
  the server; it is re-sent on resume and answered a second time.
- A reply cut by a drop is generated again from its start after the resume (the
  conversation machine fades the fragment and plays a reconnect cue, so the answer is
  heard whole, once).
- With the server's VAD the server, not our markers, ends turns: a turnComplete is taken
  to answer everything sent so far (audio spoken in that instant may not be replayed).
- Tool responses are not replayed: a call still running when its connection dies is
  cancelled; the model asks again if it still needs it.

Tool calls (``live.tool_calls``): each ``ToolCalled`` is booked with its behaviour on the
model in use; the adapter runs it and asks ``tool_answered`` what to send (the
scheduling rule, and what a barge-in does to a late answer, are there).

A retired model (``live.fallback``): a 1008 "not found / not supported for
bidiGenerateContent" is not a fatal key problem: the next fallback model is tried at
once, then (``FailureOutcome.list_models``) the adapter reads the models list and hands
it to ``models_listed``. The replacement keeps being used until restart or
``config_changed``; the uplink log is untouched by the switch, so the turn the user was
saying is sent on the replacement's fresh session.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from google.genai import types

from edge_agent.config import GeminiConfig, ReconnectConfig
from edge_agent.core.backoff import (
    BUSY_RESUME_LIMIT,
    CLOSE_POLICY,
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
from edge_agent.live.failures import (
    Caught,
    ConnectionFacts,
    classify_caught,
    keepalive_timeout_reason,
    receive_error_ends_connection,
)
from edge_agent.live.fallback import (
    AskList,
    ListedModel,
    ModelChooser,
    NothingUsable,
    Step,
    Switch,
    is_model_gone,
)
from edge_agent.live.handles import DEFAULT_VALIDITY_S, HandleBook, StoredHandle
from edge_agent.live.outage import OutageLog
from edge_agent.live.profiles import ModelProfile, ToolCalls, choose_profile
from edge_agent.live.tool_calls import ToolAnswer, ToolCallBook, call_behavior
from edge_agent.secrets import redact

logger = logging.getLogger(__name__)

MODEL_AUDIO_RATE_HZ = 24_000
COALESCE_AUDIO_BYTES = 32_000  # a replayed backlog goes out in 1 s messages
MAX_BAD_FRAMES_IN_A_ROW = 50
MAX_BAD_KINDS_LOGGED = 32  # kinds of unreadable server message each logged once at WARNING
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
    model: str = ""  # the model in use (a replacement when the configured one is gone)
    configured_model: str = ""  # gemini.model
    model_note: str | None = None  # why they differ, in one line (None: they do not)


class End(StrEnum):
    """Why a healthy connection ends."""

    CLOSE = "close"  # idle close: nobody wants a session
    HANDOVER = "handover"  # goAway: resume on a new connection


@dataclass
class Connection:
    """What this core knows about the current (or last) connection."""

    resuming: bool = False
    setup_done: bool = False
    open: bool = False  # setupComplete arrived and serving has not ended
    after_go_away: bool = False
    go_away_deadline: float | None = None  # loop time
    ping_timeout_s: float = 0.0  # the keepalive timeout this connection was opened with

    def facts(self) -> ConnectionFacts:
        return ConnectionFacts(self.resuming, self.setup_done, self.after_go_away)


@dataclass(frozen=True)
class Reaction:
    """What one server message means: events to emit in order, and a handle to persist.

    The adapter starts a tool task for each ``ToolCalled`` (after emitting it) and
    cancels the running calls a ``ToolCallCancelled`` names (before emitting it)."""

    events: tuple[LiveEvent, ...] = ()
    new_handle: StoredHandle | None = None


@dataclass(frozen=True)
class FailureOutcome:
    """After a failure: events to emit once the stored handle is cleared (if asked).
    ``list_models``: the adapter must read the models list and call ``models_listed``."""

    events: tuple[LiveEvent, ...]
    clear_stored_handle: bool
    list_models: bool = False


@dataclass
class Counters:
    attempts: int = 0
    reconnects: int = 0  # attempts made after a failure
    handovers: int = 0
    bad_frames: int = 0


@dataclass
class _Flags:
    retry_pending: bool = False  # the next attempt follows a failure
    bad_in_a_row: int = 0
    warned_rate: bool = False
    bad_kinds_logged: set[tuple[Caught, int | None, str]] = field(default_factory=set)


def parse_duration_s(value: object) -> float:
    """goAway.timeLeft is a protobuf Duration string such as "50s" or "1.5s"."""
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*s?\s*", str(value or ""))
    return float(match.group(1)) if match else DEFAULT_TIME_LEFT_S


class LiveProtocol:
    """The sans-I/O core of one LiveSession; it outlives connections (see module doc)."""

    def __init__(
        self,
        cfg: GeminiConfig,
        reconnect: ReconnectConfig,
        random: Callable[[], float],
        handle_validity_s: float = DEFAULT_VALIDITY_S,
        tool_behaviors: Mapping[str, ToolCalls | None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.models = ModelChooser(cfg.model, cfg.fallback_models)
        self.tool_calls = ToolCallBook()
        self._gone_reason = ""  # the service's words for the last model refused as gone
        self._tool_behaviors = dict(tool_behaviors or {})
        self.policy = ReconnectPolicy(reconnect, random)
        self.log = ReplayLog.for_seconds(reconnect.replay_buffer_max_s)
        self.handles = HandleBook(handle_validity_s)
        self.state = SessionState.STOPPED
        self.want_open = False  # the daemon asked for a session
        self.session_active = False  # a session was opened and not yet announced closed
        self.conn = Connection()
        self.activity_open = False  # the user's turn is open (activity_start sent)
        self.model_turn_open = False  # model output seen since the last turnComplete
        self.retry_at: float | None = None  # policy time of the next attempt
        self.last_error: str | None = None
        self.counters = Counters()
        self._flags = _Flags()
        self.outage = OutageLog()  # each failure of an outage is logged once

    # ---- what the daemon asks ------------------------------------------------------------

    def set_tool_behaviors(self, tool_behaviors: Mapping[str, ToolCalls | None]) -> None:
        """The tools declared on the next connection (MCP servers list theirs anew)."""
        self._tool_behaviors = dict(tool_behaviors)

    @property
    def ready(self) -> bool:
        return self.state in (SessionState.READY, SessionState.HANDING_OVER)

    @property
    def model(self) -> str:
        """The model the next connection asks for."""
        return self.models.active

    @property
    def profile(self) -> ModelProfile:
        return choose_profile(self.models.active)[0]

    def started(self) -> None:
        self._set_state(SessionState.IDLE)

    def stopped(self) -> None:
        self.want_open = False
        self._set_state(SessionState.STOPPED)

    def open(self) -> bool:
        """The daemon wants a session; True if that is news. Never bypasses a backoff."""
        changed = not self.want_open
        self.want_open = True
        return changed

    def close(self) -> bool:
        """Idle close (the handle is kept for next time); True if that is news."""
        changed = self.want_open
        self.want_open = False
        return changed

    def config_changed(self, cfg: GeminiConfig, reconnect: ReconnectConfig | None) -> None:
        """After a reload: leave the fatal state and retry at once with the new settings
        (``gemini.model`` again, even if a replacement was in use)."""
        self.cfg = cfg
        self.models = ModelChooser(cfg.model, cfg.fallback_models)
        if reconnect is not None:
            self.log.max_audio_bytes = ReplayLog.for_seconds(
                reconnect.replay_buffer_max_s
            ).max_audio_bytes
        self.policy.config_changed(reconnect)
        self.retry_at = None
        if self.state is SessionState.FATAL:
            self._set_state(SessionState.RETRY_WAIT)

    # ---- uplink: turn accounting -------------------------------------------------------

    def send_audio(self, pcm16k: bytes) -> None:
        if pcm16k:
            self.log.append(UplinkMessage(UplinkKind.AUDIO, audio=bytes(pcm16k)))

    def activity_start(self) -> None:
        """The user's turn begins; a marker only with client-side turn marking."""
        if self.activity_open:
            return
        self.activity_open = True
        if not self.cfg.server_vad:
            self.log.append(UplinkMessage(UplinkKind.ACTIVITY_START))

    def activity_end(self) -> None:
        """The user's turn ends: activityEnd, or audioStreamEnd with the server's VAD."""
        if not self.activity_open:
            return
        self.activity_open = False
        kind = UplinkKind.AUDIO_STREAM_END if self.cfg.server_vad else UplinkKind.ACTIVITY_END
        self.log.append(UplinkMessage(kind))

    def interrupt(self) -> None:
        """Barge-in, the protocol part: open the user's turn (client-side turn marking)."""
        self.tool_calls.barged_in()
        if not self.cfg.server_vad:
            self.activity_start()

    def next_uplink(self) -> tuple[int, UplinkMessage] | None:
        """The next message to send and the seq to pass to ``uplink_sent``; None: all sent."""
        return self.log.peek_unsent(COALESCE_AUDIO_BYTES)

    def uplink_sent(self, seq: int) -> None:
        self.log.mark_sent(seq)

    # ---- connection lifecycle ----------------------------------------------------------

    def connect_delay_s(self, now: float) -> float:
        """How long to wait before the next attempt (0: connect now)."""
        if self.retry_at is None:
            return 0.0
        remaining = self.retry_at - now
        if remaining > 0:
            return remaining
        self.retry_at = None
        return 0.0

    def session_started(self) -> None:
        """An attempt is about to start: a SessionClosed is owed when the session ends."""
        self.session_active = True

    def session_idle(self) -> SessionClosed | None:
        """Nobody wants a session: end the one still open, then rest (unless fatal)."""
        closed = self.end_session()
        if self.state is not SessionState.FATAL:
            self._set_state(SessionState.IDLE)
        return closed

    def end_session(self) -> SessionClosed | None:
        """The daemon's session is over (close() or stop()): forget its uplink."""
        if not self.session_active:
            return None
        self.session_active = False
        self.log.clear()
        self.activity_open = False
        logger.info("Live session closed")
        return SessionClosed()

    @property
    def needs_handle_load(self) -> bool:
        """The stored handle must be read from disk before choosing one."""
        return self.cfg.session_resumption and not self.handles.loaded

    def choose_handle(
        self, wall_now: float, now: float | None = None
    ) -> tuple[StoredHandle | None, bool]:
        """The handle the next connection offers, and whether the stored file must go."""
        if not self.cfg.session_resumption:
            return None, False
        handle, why_not = self.handles.usable(self.model, wall_now, now)
        if why_not is not None:
            self._drop_handle(why_not)
            return None, True
        return handle, False

    def attempt_started(self, resuming: bool) -> None:
        self.conn = Connection(resuming=resuming, ping_timeout_s=self.cfg.keepalive_ping_timeout_s)
        self._set_state(SessionState.CONNECTING)
        self.counters.attempts += 1
        if self._flags.retry_pending:
            self.counters.reconnects += 1
            self._flags.retry_pending = False

    def setup_completed(self, now: float) -> SessionReady:
        """setupComplete arrived: rewind the uplink for this connection (module doc)."""
        conn = self.conn
        self.policy.connected(now)
        conn.setup_done = conn.open = True
        if conn.resuming:
            resent = self.log.rewind_for_resume()
        else:
            resent = self.log.rewind_for_fresh_session()
        self.model_turn_open = False
        self._flags.bad_in_a_row = 0
        self._set_state(SessionState.READY)
        back = self.outage.connected(now)
        if back is not None:
            logger.info(
                "Live connection back after %.1f s (%d failed attempts)",
                back.outage_s,
                back.failures,
            )
        logger.info(
            "Live session ready (%s, attempt %d, %d uplink messages to (re)send)",
            "resumed" if conn.resuming else "new session",
            self.counters.attempts,
            resent,
        )
        return SessionReady(resumed=conn.resuming)

    def connection_closed(self) -> None:
        """Serving ended, however it ended (its tool calls are cancelled with it)."""
        self.conn.open = False
        self.tool_calls.connection_ended()

    def connection_ended(self, end: End, now: float) -> None:
        """A healthy connection ended on purpose (idle close or goAway handover)."""
        if end is End.HANDOVER:
            delay = self.policy.handed_over(now)
            self.retry_at = now + delay if delay > 0 else None
            self.counters.handovers += 1
            logger.info("Live connection handed over after goAway")
        else:
            self.policy.disconnected(now)

    # ---- handover readiness ------------------------------------------------------------

    @property
    def handover_ready(self) -> bool:
        """Every sent turn answered, no reply streaming, a handle after the last answer."""
        return self.log.settled and not self.model_turn_open

    def connection_end(self, loop_now: float) -> End | None:
        """Whether the current connection should end now, and why."""
        if not self.want_open:
            return End.CLOSE
        deadline = self.conn.go_away_deadline
        if deadline is not None and (self.handover_ready or loop_now >= deadline):
            return End.HANDOVER
        return None

    def deadline_in_s(self, loop_now: float) -> float | None:
        """Time left before a goAway forces the handover; None: no goAway."""
        deadline = self.conn.go_away_deadline
        return None if deadline is None else max(0.0, deadline - loop_now)

    # ---- server messages ---------------------------------------------------------------

    def on_message(
        self, msg: types.LiveServerMessage, loop_now: float, wall_now: float
    ) -> Reaction:
        """One parsed server message -> the events it means, and the state updates."""
        self._flags.bad_in_a_row = 0
        events: list[LiveEvent] = []
        if msg.server_content is not None:
            self._on_server_content(msg.server_content, events)
        if msg.tool_call is not None:
            for call in msg.tool_call.function_calls or []:
                name = call.name or ""
                behavior = call_behavior(self.profile, self._tool_behaviors.get(name))
                logger.info("model called tool %s (%s)", name, behavior)
                if call.id:
                    self.tool_calls.called(call.id, name, behavior)
                events.append(ToolCalled(name, dict(call.args or {}), call.id))
        if msg.tool_call_cancellation is not None:
            ids = tuple(msg.tool_call_cancellation.ids or ())
            logger.info("tool calls cancelled by the server: %s", ", ".join(ids))
            self.tool_calls.cancelled(ids)
            events.append(ToolCallCancelled(ids))
        if msg.go_away is not None:
            events.append(self._on_go_away(msg.go_away.time_left, loop_now))
        new_handle = None
        update = msg.session_resumption_update
        if update is not None and update.resumable and update.new_handle:
            new_handle = self.handles.received(update.new_handle, self.model, wall_now, loop_now)
            self.log.handle_received()
            logger.debug("new resumption handle")
        if msg.usage_metadata is not None:
            logger.debug("usage: %s tokens", msg.usage_metadata.total_token_count)
        return Reaction(tuple(events), new_handle)

    def _on_server_content(self, content: types.LiveServerContent, out: list[LiveEvent]) -> None:
        if content.input_transcription is not None and content.input_transcription.text:
            out.append(InputTranscript(content.input_transcription.text))
        if content.model_turn is not None or content.output_transcription is not None:
            self.model_turn_open = True
        if content.model_turn is not None:
            for part in content.model_turn.parts or []:
                blob = part.inline_data
                if blob is not None and blob.data and (blob.mime_type or "").startswith("audio/"):
                    self._check_audio_rate(blob.mime_type or "")
                    out.append(ModelAudioReceived(blob.data))
        if content.output_transcription is not None and content.output_transcription.text:
            out.append(OutputTranscript(content.output_transcription.text))
        if content.interrupted:
            self.tool_calls.barged_in()
            out.append(ServerInterrupted())
        if content.generation_complete:
            out.append(GenerationCompleted())
        if content.turn_complete:
            self.log.turn_completed(answers_all=self.cfg.server_vad)
            if not self.cfg.session_resumption:
                self.log.handle_received()  # nothing to resume: answered turns can go
            self.model_turn_open = False
            out.append(TurnCompleted())

    def _check_audio_rate(self, mime_type: str) -> None:
        match = re.search(r"rate=(\d+)", mime_type)
        if match and int(match.group(1)) != MODEL_AUDIO_RATE_HZ and not self._flags.warned_rate:
            self._flags.warned_rate = True
            logger.warning("model audio is %s, expected %d Hz", mime_type, MODEL_AUDIO_RATE_HZ)

    def _on_go_away(self, time_left: object, loop_now: float) -> GoAwayReceived:
        time_left_s = parse_duration_s(time_left)
        margin = min(HANDOVER_MARGIN_S, time_left_s / 2.0)
        self.conn.after_go_away = True
        self.conn.go_away_deadline = loop_now + time_left_s - margin
        self._set_state(SessionState.HANDING_OVER)
        logger.info("Live server sent goAway (%.1f s left): handing over", time_left_s)
        return GoAwayReceived(time_left_s)

    def receive_error(
        self, caught: Caught, code: int | None = None, reason: str = ""
    ) -> Failure | None:
        """``receive()`` raised: the connection ends (a close code, or too many bad frames
        in a row), or that one message is skipped (None)."""
        if caught is Caught.KEEPALIVE_TIMEOUT or (
            caught is Caught.API_ERROR and receive_error_ends_connection(code)
        ):
            return self.failure(caught, code, reason)
        flags = self._flags
        flags.bad_in_a_row += 1
        self.counters.bad_frames += 1
        what = f"error message from server ({code}): {reason}" if code is not None else reason
        text = redact(what)[:200]
        # Once per kind (the error code, or the exception class) for the daemon's life:
        # a server that keeps sending one odd frame must not fill the journal.
        kind = (caught, code, "" if code is not None else reason.partition(":")[0][:60])
        if kind in flags.bad_kinds_logged or len(flags.bad_kinds_logged) >= MAX_BAD_KINDS_LOGGED:
            logger.debug("skipped an unreadable Live server message (%s)", text)
        else:
            flags.bad_kinds_logged.add(kind)
            logger.warning(
                "skipped an unreadable Live server message (%s); more of this kind are "
                "logged at debug level and counted in `edge-agent status`",
                text,
            )
        if flags.bad_in_a_row >= MAX_BAD_FRAMES_IN_A_ROW:
            reason = f"{flags.bad_in_a_row} unreadable server messages in a row"
            return self.failure(Caught.BAD_FRAMES, reason=reason)
        return None

    # ---- failures and handles ----------------------------------------------------------

    def failure(self, caught: Caught, code: int | None = None, reason: str = "") -> Failure:
        """What the adapter caught on the current connection, as a policy ``Failure``."""
        if caught is Caught.KEEPALIVE_TIMEOUT:
            reason = keepalive_timeout_reason(self.conn.ping_timeout_s)
        return classify_caught(caught, self.conn.facts(), code, reason)

    def tool_answered(self, call_id: str, answer: ToolAnswer) -> types.FunctionResponse | None:
        """A tool finished: the response to send (None: nothing, see ``live.tool_calls``)."""
        return self.tool_calls.response_for(call_id, answer)

    def failed(self, failure: Failure, now: float) -> FailureOutcome:
        """A connection attempt or a live connection failed: backoff, handle, state."""
        if is_model_gone(failure):
            self.policy.disconnected(now)
            self._gone_reason = failure.reason
            return self._next_model(self.models.model_gone(self.model), now)
        return self._failed(failure, now)

    def models_listed(
        self, listed: list[ListedModel] | None, error: str, now: float
    ) -> FailureOutcome:
        """The adapter read the models list (None: the call failed with ``error``)."""
        return self._next_model(self.models.models_listed(listed, error), now)

    def _next_model(self, step: Step, now: float) -> FailureOutcome:
        gone = self.models.gone[-1] if self.models.gone else self.model
        self._flags.retry_pending = True
        clear = self.handles.drop()  # a handle is for the model that issued it
        if isinstance(step, Switch):
            logger.warning(
                "Gemini Live model %s is gone (the service says: %s). Using %s instead, "
                "from %s, until restart or reload; set gemini.model to a current model",
                gone,
                redact(self._gone_reason)[:160] or "not found",
                step.model,
                step.source.value,
            )
            self.retry_at = None  # a different model: try it now
            self._set_state(SessionState.RETRY_WAIT)
            return FailureOutcome((), clear)
        if isinstance(step, AskList):
            logger.info("model %s is gone and no fallback is left: reading the models list", gone)
            self._set_state(SessionState.RETRY_WAIT)
            return FailureOutcome((), clear, list_models=True)
        assert isinstance(step, NothingUsable)
        fatal = Failure(FailureKind.CLOSED, CLOSE_POLICY, step.message)
        outcome = self._failed(fatal, now, model_problem=step.message)
        return FailureOutcome(outcome.events, clear or outcome.clear_stored_handle)

    def _failed(self, failure: Failure, now: float, model_problem: str = "") -> FailureOutcome:
        decision = self.policy.failed(failure, now)
        reason = redact(model_problem or decision.reason)
        abandon = decision.verdict is Verdict.ABANDON_HANDLE
        if abandon:
            # One clear line, instead of the usual "connection lost" warning.
            logger.warning(
                "Gemini Live refused to resume the session %d times since the last good "
                "setup (%s): it still holds the old connection. Dropping the resumption "
                "handle and starting a fresh session now (the conversation so far is "
                "forgotten)",
                BUSY_RESUME_LIMIT,
                reason,
            )
            self._drop_handle("resume kept being refused", quiet=True)
        elif decision.drop_handle:
            self._drop_handle("refused by the server")
        clear = abandon or decision.drop_handle
        if decision.verdict is Verdict.HANDOVER:
            self.counters.handovers += 1
            self.retry_at = now + decision.delay_s if decision.delay_s > 0 else None
            logger.info("Live connection ended after goAway (%s): resuming", reason)
            return FailureOutcome((), clear)
        self.last_error = reason
        self.retry_at = now + decision.delay_s
        self._flags.retry_pending = True
        if decision.fatal and model_problem:
            self._set_state(SessionState.FATAL)
            logger.error("Gemini Live: %s; retrying in %.0f s", reason, decision.delay_s)
        elif decision.fatal:
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
                news = self.outage.failed(reason, now)  # a repeat of this outage: DEBUG
                logger.log(
                    logging.WARNING if news else logging.DEBUG,
                    "Live connection lost: %s; retrying in %.1f s",
                    reason,
                    decision.delay_s,
                )
        lost = SessionLost(reason, fatal=decision.fatal, retry_in_s=decision.delay_s)
        return FailureOutcome((lost,), clear)

    def _drop_handle(self, why: str, *, quiet: bool = False) -> None:
        if self.handles.drop() and not quiet:
            logger.info("dropping the resumption handle: %s; next session starts fresh", why)

    # ---- status ------------------------------------------------------------------------

    def status(self, now: float, wall_now: float, tool_calls_running: int) -> LiveStatus:
        retry_in = None if self.retry_at is None else max(0.0, self.retry_at - now)
        counters = self.counters
        return LiveStatus(
            state=self.state,
            ready=self.ready,
            last_error=self.last_error,
            fatal=self.policy.fatal,
            retry_in_s=retry_in,
            reconnect_count=counters.reconnects,
            connection_attempts=counters.attempts,
            handovers=counters.handovers,
            bad_frames=counters.bad_frames,
            tool_calls_running=tool_calls_running,
            handle_age_s=self.handles.age_s(wall_now, now),
            replay=self.log.stats(),
            model=self.models.active,
            configured_model=self.models.configured,
            model_note=self.models.note,
        )

    def _set_state(self, state: SessionState) -> None:
        if state is not self.state:
            logger.debug("live session state %s -> %s", self.state, state)
            self.state = state

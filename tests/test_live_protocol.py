"""The Live protocol core, pure: no sockets, no event loop, times passed in.

Server messages are built from the wire JSON the real service sends (camelCase, proto3
defaults left out) and parsed by google-genai's own model, as the adapter receives them.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from google.genai import types

from edge_agent.config import GeminiConfig, ReconnectConfig
from edge_agent.core.backoff import BUSY_RESUME_LIMIT, Failure, FailureKind
from edge_agent.core.events import (
    GenerationCompleted,
    GoAwayReceived,
    InputTranscript,
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
from edge_agent.core.replay import UplinkKind, UplinkMessage
from edge_agent.live.failures import (
    Caught,
    ConnectionFacts,
    classify_caught,
    is_close_code,
    is_keepalive_timeout,
)
from edge_agent.live.fallback import (
    AskList,
    ListedModel,
    ModelChooser,
    NothingUsable,
    Source,
    Switch,
    best_listed,
    is_model_gone,
)
from edge_agent.live.handles import HandleBook, StoredHandle
from edge_agent.live.profiles import (
    GEMINI_2_5_NATIVE_AUDIO,
    GEMINI_3_1_FLASH_LIVE,
    GEMINI_3_8_LIVE,
    ToolCalls,
)
from edge_agent.live.protocol import (
    HANDOVER_MARGIN_S,
    MAX_BAD_FRAMES_IN_A_ROW,
    End,
    LiveProtocol,
    SessionState,
    parse_duration_s,
)
from edge_agent.live.tool_calls import ToolAnswer, declaration_behavior, pick_scheduling

RECONNECT = ReconnectConfig(initial_delay_s=1.0, max_delay_s=8.0, jitter=0.0)
MODEL = GeminiConfig().model
WALL = 1_000_000.0


def proto(**cfg: Any) -> LiveProtocol:
    p = LiveProtocol(GeminiConfig(**cfg), RECONNECT, random=lambda: 0.0)
    p.started()
    p.open()
    return p


def wire(body: dict[str, Any]) -> types.LiveServerMessage:
    """A server frame as the service sends it, parsed by the SDK."""
    return types.LiveServerMessage.model_validate_json(json.dumps(body))


def audio_msg(data: bytes = b"\x01\x02" * 8, rate: int = 24_000) -> types.LiveServerMessage:
    blob = {"mimeType": f"audio/pcm;rate={rate}", "data": base64.b64encode(data).decode()}
    return wire({"serverContent": {"modelTurn": {"parts": [{"inlineData": blob}]}}})


TURN_COMPLETE = {"serverContent": {"turnComplete": True}}
HANDLE = {"sessionResumptionUpdate": {"newHandle": "h-1", "resumable": True}}


def connect(p: LiveProtocol, now: float = 0.0, resuming: bool = False) -> SessionReady:
    p.session_started()
    p.attempt_started(resuming=resuming)
    return p.setup_completed(now)


def send_all(p: LiveProtocol) -> list[UplinkMessage]:
    """What the adapter's sender does: send what the core says is next, report it sent."""
    sent = []
    while (item := p.next_uplink()) is not None:
        seq, message = item
        sent.append(message)
        p.uplink_sent(seq)
    return sent


def kinds(messages: list[UplinkMessage]) -> list[UplinkKind]:
    return [m.kind for m in messages]


def say(p: LiveProtocol, pcm: bytes = b"\x00" * 640) -> None:
    p.activity_start()
    p.send_audio(pcm)
    p.activity_end()


def receive(p: LiveProtocol, body: dict[str, Any], loop_now: float = 0.0) -> list[object]:
    return list(p.on_message(wire(body), loop_now, WALL).events)


# ---- turn accounting -------------------------------------------------------------------


def test_client_vad_turn_is_bracketed_and_buffered_until_setup() -> None:
    p = proto()
    say(p)  # spoken while connecting
    assert p.next_uplink() is not None  # buffered, waiting for a connection
    connect(p)
    assert kinds(send_all(p)) == [
        UplinkKind.ACTIVITY_START,
        UplinkKind.AUDIO,
        UplinkKind.ACTIVITY_END,
    ]
    p.activity_end()  # a second end without a start sends nothing
    assert send_all(p) == []


def test_server_vad_sends_no_activity_markers_and_ends_with_audio_stream_end() -> None:
    p = proto(server_vad=True)
    connect(p)
    say(p)
    assert kinds(send_all(p)) == [UplinkKind.AUDIO, UplinkKind.AUDIO_STREAM_END]


def test_interrupt_opens_the_users_turn_only_with_client_vad() -> None:
    p = proto()
    connect(p)
    p.interrupt()
    p.interrupt()  # the turn is already open
    assert kinds(send_all(p)) == [UplinkKind.ACTIVITY_START]
    p.activity_start()  # the ears' speech start reuses the open turn
    assert send_all(p) == []
    q = proto(server_vad=True)
    connect(q)
    q.interrupt()
    assert send_all(q) == []  # activityStart with the server's VAD is an error


def test_answered_and_covered_turns_are_not_resent_on_resume() -> None:
    p = proto()
    connect(p)
    say(p, b"\x01" * 640)
    send_all(p)
    receive(p, TURN_COMPLETE)
    receive(p, HANDLE)
    say(p, b"\x02" * 640)  # the next turn, unanswered when the connection drops
    send_all(p)
    p.connection_closed()
    connect(p, resuming=True)
    resent = send_all(p)
    assert [m.audio for m in resent if m.audio] == [b"\x02" * 640]
    assert p.log.stats().covered == 1


def test_answer_without_its_handle_is_resent_on_resume_but_not_on_a_fresh_session() -> None:
    """The server forgets an answered turn whose handle never came; a fresh session has
    no context, and re-sending an answered turn would get it answered aloud again."""
    for resuming, expected in ((True, 1), (False, 0)):
        p = proto()
        connect(p)
        say(p)
        send_all(p)
        receive(p, TURN_COMPLETE)  # the handle after it is lost with the connection
        connect(p, resuming=resuming)
        assert len([m for m in send_all(p) if m.kind is UplinkKind.ACTIVITY_END]) == expected


def test_without_resumption_a_turn_complete_lets_the_answered_turn_go() -> None:
    p = proto(session_resumption=False)
    connect(p)
    say(p)
    send_all(p)
    receive(p, TURN_COMPLETE)
    assert p.log.stats().entries == 0 and p.handover_ready


def test_end_session_forgets_the_uplink_and_announces_once() -> None:
    p = proto()
    connect(p)
    p.activity_start()
    p.send_audio(b"\x00" * 640)
    p.close()
    assert isinstance(p.session_idle(), SessionClosed)
    assert p.state is SessionState.IDLE and p.log.stats().entries == 0
    assert p.session_idle() is None and p.end_session() is None
    p.activity_start()  # the turn was closed with the session: a new one starts
    assert kinds(send_all(p)) == [UplinkKind.ACTIVITY_START]


# ---- what server messages mean ---------------------------------------------------------


def test_a_reply_in_wire_order_becomes_events_in_that_order() -> None:
    p = proto()
    connect(p)
    say(p)
    send_all(p)
    events = receive(p, {"sessionResumptionUpdate": {}})  # "not resumable": no handle
    events += receive(p, {"serverContent": {"inputTranscription": {"text": "hello"}}})
    events += list(p.on_message(audio_msg(b"\x05\x06"), 0.0, WALL).events)
    events += receive(p, {"serverContent": {"outputTranscription": {"text": "Hi"}}})
    events += receive(p, {"serverContent": {"generationComplete": True}})
    events += receive(p, {**TURN_COMPLETE, "usageMetadata": {"totalTokenCount": 12}})
    assert events == [
        InputTranscript("hello"),
        ModelAudioReceived(b"\x05\x06"),
        OutputTranscript("Hi"),
        GenerationCompleted(),
        TurnCompleted(),
    ]
    assert p.log.stats().turns_completed == 1 and p.handles.current is None


def test_reply_audio_after_interrupt_is_reported_as_it_is() -> None:
    """Stale audio is the conversation machine's call, not the session's."""
    p = proto()
    connect(p)
    say(p)
    send_all(p)
    receive(p, {"serverContent": {"modelTurn": {"parts": []}}})
    p.interrupt()
    more = list(p.on_message(audio_msg(b"\x07\x08"), 0.0, WALL).events)
    assert more == [ModelAudioReceived(b"\x07\x08")]
    assert receive(p, {"serverContent": {"interrupted": True}}) == [ServerInterrupted()]
    assert receive(p, TURN_COMPLETE) == [TurnCompleted()]
    assert p.log.stats().turns_completed == 1  # the interrupted reply answered the turn


def test_tool_calls_and_cancellations() -> None:
    p = proto()
    connect(p)
    call = {"id": "c1", "name": "get_time", "args": {"zone": "UTC"}}
    events = receive(p, {"toolCall": {"functionCalls": [call]}})
    assert events == [ToolCalled("get_time", {"zone": "UTC"}, "c1")]
    assert receive(p, {"toolCallCancellation": {"ids": ["c1"]}}) == [ToolCallCancelled(("c1",))]


def test_non_audio_parts_are_ignored_and_a_wrong_rate_still_plays() -> None:
    p = proto()
    connect(p)
    text_part = {"serverContent": {"modelTurn": {"parts": [{"text": "thinking..."}]}}}
    assert receive(p, text_part) == []
    assert p.model_turn_open  # a reply is streaming all the same
    events = list(p.on_message(audio_msg(b"\x01\x00", rate=16_000), 0.0, WALL).events)
    assert events == [ModelAudioReceived(b"\x01\x00")]


def test_a_resumable_handle_is_kept_with_its_wall_time_and_covers_answers() -> None:
    p = proto()
    connect(p)
    say(p)
    send_all(p)
    receive(p, TURN_COMPLETE)
    reaction = p.on_message(wire(HANDLE), 0.0, WALL)
    assert reaction.new_handle == StoredHandle("h-1", WALL, MODEL)
    assert p.handles.current == reaction.new_handle and p.log.stats().covered == 1
    refused = {"sessionResumptionUpdate": {"newHandle": "h-2", "resumable": False}}
    assert p.on_message(wire(refused), 0.0, WALL).new_handle is None
    assert p.handles.current.handle == "h-1"


# ---- handover readiness ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("time_left", "seconds"), [("50s", 50.0), ("1.5s", 1.5), (7, 7.0), ("garbage", 10.0)]
)
def test_go_away_time_left_parsing(time_left: object, seconds: float) -> None:
    assert parse_duration_s(time_left) == seconds


def test_go_away_waits_for_the_answer_and_the_handle_after_it() -> None:
    p = proto()
    connect(p)
    say(p)
    send_all(p)
    assert p.connection_end(100.0) is None  # no goAway: nothing to end
    assert p.deadline_in_s(100.0) is None
    assert receive(p, {"goAway": {"timeLeft": "50s"}}, loop_now=100.0) == [GoAwayReceived(50.0)]
    assert p.state is SessionState.HANDING_OVER and p.ready
    assert p.deadline_in_s(100.0) == 50.0 - HANDOVER_MARGIN_S
    assert p.connection_end(101.0) is None  # the turn is owed its answer
    receive(p, {"serverContent": {"modelTurn": {"parts": []}}})
    receive(p, TURN_COMPLETE)
    assert p.connection_end(102.0) is None  # answered, but the handle is not here yet
    receive(p, HANDLE)
    assert p.connection_end(103.0) is End.HANDOVER


def test_go_away_hands_over_at_the_deadline_whatever_is_pending() -> None:
    p = proto()
    connect(p)
    say(p)
    send_all(p)
    receive(p, {"goAway": {"timeLeft": "4s"}}, loop_now=10.0)
    deadline = 10.0 + 4.0 - 2.0  # the margin is at most half the time left
    assert p.connection_end(deadline - 0.01) is None
    assert p.connection_end(deadline) is End.HANDOVER
    assert p.failure(Caught.CLOSED, 1008, "x").after_go_away


def test_server_vad_reply_streaming_holds_the_handover_with_nothing_owed() -> None:
    """The server's VAD ended the turn: no marker of ours is owed, only the open model
    turn says a reply is streaming; cutting it would replay the answered turn."""
    p = proto(server_vad=True)
    connect(p)
    p.activity_start()
    p.send_audio(b"\x00" * 640)  # the mic keeps streaming: no audioStreamEnd yet
    send_all(p)
    receive(p, HANDLE)
    receive(p, {"serverContent": {"outputTranscription": {"text": "Sure"}}})
    receive(p, {"goAway": {"timeLeft": "60s"}})
    assert not p.log.reply_owed and p.connection_end(1.0) is None
    receive(p, TURN_COMPLETE)
    assert p.connection_end(2.0) is None  # the handle after the answer
    receive(p, HANDLE)
    assert p.connection_end(3.0) is End.HANDOVER


def test_idle_close_ends_the_connection() -> None:
    p = proto()
    connect(p)
    p.close()
    assert p.connection_end(0.0) is End.CLOSE


def test_handover_resumes_at_once_unless_it_keeps_happening_early() -> None:
    p = proto()
    connect(p, now=0.0)
    p.connection_ended(End.HANDOVER, now=600.0)
    assert p.connect_delay_s(600.0) == 0.0 and p.counters.handovers == 1
    connect(p, now=600.0, resuming=True)
    p.connection_ended(End.HANDOVER, now=601.0)  # a goAway right after setup: back off
    assert p.connect_delay_s(601.0) == RECONNECT.initial_delay_s


# ---- failure classification -------------------------------------------------------------


@pytest.mark.parametrize(
    ("caught", "code", "reason", "kind", "want_code", "want_reason"),
    [
        (Caught.API_ERROR, 1011, "deadline expired", FailureKind.CLOSED, 1011, "deadline expired"),
        (Caught.API_ERROR, 503, "unavailable", FailureKind.NETWORK, 503, "unavailable"),
        (Caught.CLOSED, None, "", FailureKind.CLOSED, 1006, "connection closed without"),
        (Caught.CLOSED, 1007, "stale", FailureKind.CLOSED, 1007, "stale"),
        (Caught.HTTP_REFUSED, 403, "", FailureKind.HTTP, 403, "websocket upgrade refused"),
        (Caught.NO_KEY, None, "no API key", FailureKind.NO_KEY, None, "no API key"),
        (Caught.TRANSPORT, 42, "OSError: reset", FailureKind.NETWORK, None, "OSError: reset"),
        (Caught.SETUP_TIMEOUT, None, "slow", FailureKind.SETUP_TIMEOUT, None, "slow"),
        (Caught.NO_SETUP_COMPLETE, None, "", FailureKind.PROTOCOL, None, "not setupComplete"),
        (Caught.INTERNAL, None, "bug", FailureKind.PROTOCOL, None, "bug"),
    ],
)
def test_what_the_adapter_caught_maps_onto_a_failure(
    caught: Caught,
    code: int | None,
    reason: str,
    kind: FailureKind,
    want_code: int | None,
    want_reason: str,
) -> None:
    facts = ConnectionFacts(resuming=True, setup_done=False)
    failure = classify_caught(caught, facts, code, reason)
    assert failure.kind is kind and failure.code == want_code
    assert want_reason in failure.reason
    assert failure.during_setup and failure.resuming and not failure.after_go_away


def test_close_codes_are_told_from_other_numbers() -> None:
    assert is_close_code(1000) and is_close_code(4999) and is_close_code(1011)
    assert not is_close_code(503) and not is_close_code(None) and not is_close_code(True)


@pytest.mark.shelf
def test_a_keepalive_timeout_is_told_from_a_plain_drop() -> None:
    """websockets closes with its own 1011 "keepalive ping timeout" and receives no close
    frame; any frame received, or another code or reason sent, is something else."""
    assert is_keepalive_timeout(False, 1011, "keepalive ping timeout")
    assert not is_keepalive_timeout(True, 1011, "keepalive ping timeout")  # server closed
    assert not is_keepalive_timeout(False, None, None)  # a TCP drop: nothing sent
    assert not is_keepalive_timeout(False, 1000, "")  # we closed on purpose
    assert not is_keepalive_timeout(False, 1011, "close during fragmented message")


@pytest.mark.shelf
def test_a_keepalive_timeout_ends_the_connection_and_says_the_server_went_quiet() -> None:
    p = proto(keepalive_ping_interval_s=20.0, keepalive_ping_timeout_s=45.0)
    connect(p)
    failure = p.receive_error(Caught.KEEPALIVE_TIMEOUT)
    assert failure is not None and failure.kind is FailureKind.NETWORK
    assert failure.code is None and not failure.during_setup
    assert failure.describe() == (
        "the server stopped answering keepalive pings (no pong within 45 s)"
    )
    assert p.counters.bad_frames == 0  # not taken for an unreadable message
    outcome = p.failed(failure, now=3.0)
    (lost,) = outcome.events
    assert isinstance(lost, SessionLost) and not lost.fatal
    assert lost.reason == failure.describe()


def test_receive_errors_cost_one_message_until_too_many_in_a_row() -> None:
    p = proto()
    connect(p)
    assert p.receive_error(Caught.UNREADABLE, None, "ValueError: not json") is None
    assert p.receive_error(Caught.API_ERROR, 500, "server said no") is None  # not a close
    receive(p, {"serverContent": {"generationComplete": True}})  # a good one: run resets
    for _ in range(MAX_BAD_FRAMES_IN_A_ROW - 1):
        assert p.receive_error(Caught.UNREADABLE, None, "TypeError: unknown") is None
    failure = p.receive_error(Caught.UNREADABLE, None, "TypeError: unknown")
    assert failure is not None and failure.kind is FailureKind.PROTOCOL
    assert p.counters.bad_frames == MAX_BAD_FRAMES_IN_A_ROW + 2
    closed = p.receive_error(Caught.API_ERROR, 1011, "internal")
    assert closed is not None and closed.code == 1011 and not closed.during_setup


def test_a_rejected_key_is_fatal_and_retried_slowly_until_the_config_changes() -> None:
    p = proto()
    p.session_started()
    p.attempt_started(resuming=False)
    outcome = p.failed(p.failure(Caught.API_ERROR, 1007, "API key not valid."), now=5.0)
    (lost,) = outcome.events
    assert isinstance(lost, SessionLost) and lost.fatal
    assert lost.retry_in_s == RECONNECT.fatal_retry_delay_s and not outcome.clear_stored_handle
    assert p.state is SessionState.FATAL and p.status(5.0, WALL, 0).fatal
    assert p.connect_delay_s(5.0) == RECONNECT.fatal_retry_delay_s
    p.config_changed(p.cfg, None)
    assert p.state is SessionState.RETRY_WAIT and p.connect_delay_s(5.0) == 0.0


def test_a_drop_backs_off_and_counts_a_reconnect() -> None:
    p = proto()
    connect(p)
    outcome = p.failed(p.failure(Caught.CLOSED), now=3.0)
    (lost,) = outcome.events
    assert not lost.fatal and "1006" in lost.reason and lost.retry_in_s == 1.0
    assert p.state is SessionState.RETRY_WAIT and p.connect_delay_s(3.5) == pytest.approx(0.5)
    assert p.connect_delay_s(4.0) == 0.0
    p.attempt_started(resuming=True)
    status = p.status(4.0, WALL, 0)
    assert status.reconnect_count == 1 and status.connection_attempts == 2


def test_the_server_closing_after_go_away_is_a_handover_not_a_loss() -> None:
    p = proto()
    connect(p, now=0.0)
    receive(p, {"goAway": {"timeLeft": "50s"}})
    outcome = p.failed(p.failure(Caught.API_ERROR, 1008, "The operation was aborted."), 540.0)
    assert outcome.events == () and p.counters.handovers == 1
    assert p.connect_delay_s(540.0) == 0.0


# ---- handle bookkeeping ----------------------------------------------------------------


def test_handle_book_offers_only_a_fresh_handle_for_this_model() -> None:
    book = HandleBook(validity_s=100.0)
    assert book.usable(MODEL, WALL) == (None, None)
    book.received("h", MODEL, WALL)
    assert book.usable(MODEL, WALL + 99.0) == (StoredHandle("h", WALL, MODEL), None)
    assert book.age_s(WALL + 10.0) == 10.0
    handle, why = book.usable(MODEL, WALL + 100.0)
    assert handle is None and "expired" in why
    handle, why = book.usable("another-model", WALL)
    assert handle is None and why is not None
    handle, why = book.usable(MODEL, WALL - 1.0)  # issued in the future: clock went back
    assert handle is None and why is not None
    assert book.drop() and not book.drop() and book.loaded


def test_the_stored_handle_is_loaded_once_and_an_expired_one_is_cleared() -> None:
    p = proto()
    assert p.needs_handle_load
    p.handles.loaded_from_store(StoredHandle("old", WALL - 3 * 3600.0, MODEL))
    assert not p.needs_handle_load
    assert p.choose_handle(WALL) == (None, True)  # expired: drop it and clear the file
    assert p.choose_handle(WALL) == (None, False)
    q = proto(session_resumption=False)
    assert not q.needs_handle_load and q.choose_handle(WALL) == (None, False)


def test_a_refused_handle_is_dropped_for_a_fresh_session_at_once() -> None:
    p = proto()
    p.handles.received("stale", MODEL, WALL)
    handle, _ = p.choose_handle(WALL)
    p.session_started()
    p.attempt_started(resuming=handle is not None)
    outcome = p.failed(p.failure(Caught.API_ERROR, 1007, "invalid handle"), now=1.0)
    assert outcome.clear_stored_handle and p.handles.current is None
    assert not outcome.events[0].fatal and p.connect_delay_s(1.0) == 0.0
    assert p.choose_handle(WALL) == (None, False)


def test_busy_resumes_give_up_on_the_handle_after_the_limit() -> None:
    """1011 during a resuming setup: the server still holds the old connection."""
    p = proto()
    p.handles.received("h", MODEL, WALL)
    outcomes = []
    for attempt in range(BUSY_RESUME_LIMIT):
        handle, _ = p.choose_handle(WALL)
        assert handle is not None
        p.attempt_started(resuming=True)
        failure = p.failure(Caught.API_ERROR, 1011, "busy")
        outcomes.append(p.failed(failure, now=float(attempt)))
    assert [o.clear_stored_handle for o in outcomes] == [False] * (BUSY_RESUME_LIMIT - 1) + [True]
    assert p.handles.current is None and p.choose_handle(WALL) == (None, False)
    assert p.connect_delay_s(float(BUSY_RESUME_LIMIT)) == 0.0  # the fresh session: at once


# ---- a retired model (live.fallback) --------------------------------------------------

GONE_1008 = (
    "models/gemini-3.8-live is not found for API version v1beta, or is not supported for "
    "bidiGenerateContent. Call ListModels to see the list of available models and their "
    "supported methods."
)


def gone_failure(p: LiveProtocol, model: str = "gemini-3.8-live") -> Failure:
    reason = GONE_1008.replace("gemini-3.8-live", model).encode()[:123].decode()  # close frame
    return p.failure(Caught.API_ERROR, 1008, reason)


def listed(*names: str, live: bool = True) -> list[ListedModel]:
    actions = ("bidiGenerateContent",) if live else ("generateContent",)
    return [ListedModel(f"models/{name}", actions) for name in names]


def test_the_cut_not_found_reason_is_a_gone_model_and_other_1008s_are_not() -> None:
    p = proto()
    long_name = "gemini-2.5-flash-native-audio-preview-12-2025"
    assert is_model_gone(gone_failure(p))
    assert is_model_gone(gone_failure(p, long_name))  # "not supported" is cut off here
    assert not is_model_gone(p.failure(Caught.API_ERROR, 1008, "Method doesn't allow it"))
    assert not is_model_gone(p.failure(Caught.API_ERROR, 1007, GONE_1008))


def test_fallbacks_are_tried_in_order_then_the_models_list() -> None:
    chooser = ModelChooser("gemini-3.8-live", ("models/gemini-3.1-flash-live-preview", "x-1"))
    assert chooser.note is None and chooser.active == "gemini-3.8-live"
    assert chooser.model_gone("gemini-3.8-live") == Switch(
        "gemini-3.1-flash-live-preview", Source.FALLBACK
    )
    assert "gemini-3.8-live is gone" in (chooser.note or "")
    assert chooser.model_gone("gemini-3.1-flash-live-preview") == Switch("x-1", Source.FALLBACK)
    assert chooser.model_gone("x-1") == AskList()
    step = chooser.models_listed(listed("gemini-3.8-live", "gemini-3.1-flash-live-preview"))
    assert isinstance(step, NothingUsable)  # every listed one was refused already
    assert "gemini-3.8-live, gemini-3.1-flash-live-preview, x-1" in step.message
    assert chooser.active == "gemini-3.8-live" and chooser.gone == []  # starts over


def test_the_models_list_gives_the_newest_stable_live_model_of_a_known_family() -> None:
    rows = [
        *listed("gemini-3.8-flash", live=False),  # not a Live model
        *listed(
            "gemini-9.9-live",  # unknown family: we would not know how to set it up
            "gemini-2.5-flash-native-audio-latest",  # a moving alias: not stable
            "gemini-2.5-flash-native-audio-preview-09-2025",
            "gemini-2.5-flash-native-audio-preview-12-2025",
            "gemini-3.1-flash-live-preview",
            "gemini-3.8-live-extended-thinking",
            "gemini-3.8-live",
        ),
    ]
    assert best_listed(rows, skip=()) == "gemini-3.8-live"
    assert best_listed(rows, skip=("gemini-3.8-live",)) == "gemini-3.8-live-extended-thinking"
    no_3_8 = ("gemini-3.8-live", "gemini-3.8-live-extended-thinking")
    assert best_listed(rows, skip=no_3_8) == "gemini-3.1-flash-live-preview"
    only_2_5 = (*no_3_8, "gemini-3.1-flash-live-preview")
    assert best_listed(rows, skip=only_2_5) == "gemini-2.5-flash-native-audio-preview-12-2025"
    assert best_listed(listed("gemini-9.9-live"), skip=()) is None


def test_a_gone_model_switches_at_once_keeping_the_users_turn() -> None:
    p = proto(fallback_models=("gemini-3.1-flash-live-preview",))
    p.handles.received("h-old", MODEL, WALL)
    p.session_started()
    p.attempt_started(resuming=True)
    say(p, b"\x07" * 640)  # spoken while the refused setup was under way
    outcome = p.failed(gone_failure(p), now=5.0)
    assert outcome.events == () and not outcome.list_models and outcome.clear_stored_handle
    assert p.model == "gemini-3.1-flash-live-preview" and p.connect_delay_s(5.0) == 0.0
    assert p.state is SessionState.RETRY_WAIT and not p.policy.fatal
    assert p.choose_handle(WALL) == (None, False)  # the old model's handle went with it
    status = p.status(5.0, WALL, 0)
    assert (status.model, status.configured_model) == (p.model, MODEL)
    assert status.model_note and "gemini-3.1-flash-live-preview" in status.model_note
    p.attempt_started(resuming=False)
    p.setup_completed(6.0)
    assert kinds(send_all(p)) == [
        UplinkKind.ACTIVITY_START,
        UplinkKind.AUDIO,
        UplinkKind.ACTIVITY_END,
    ]
    p.config_changed(GeminiConfig(), None)  # a reload goes back to gemini.model
    assert p.model == MODEL and p.status(6.0, WALL, 0).model_note is None


def test_nothing_usable_is_fatal_with_a_clear_message_at_the_fatal_rate() -> None:
    p = proto()
    p.session_started()
    p.attempt_started(resuming=False)
    outcome = p.failed(gone_failure(p), now=0.0)
    assert outcome.list_models and outcome.events == ()
    outcome = p.models_listed(listed("gemini-3.8-live"), "", now=0.0)
    (lost,) = outcome.events
    assert isinstance(lost, SessionLost) and lost.fatal
    assert lost.retry_in_s == RECONNECT.fatal_retry_delay_s
    assert "no usable Live model" in lost.reason and "gemini-3.8-live" in lost.reason
    assert p.state is SessionState.FATAL and p.model == MODEL  # the next try starts over
    failed_list = p.models_listed(None, "ConnectError: refused", now=1.0)
    assert "could not be read (ConnectError: refused)" in failed_list.events[0].reason


# ---- tool calls (live.tool_calls) -----------------------------------------------------

WHEN_IDLE = types.FunctionResponseScheduling.WHEN_IDLE
SILENT = types.FunctionResponseScheduling.SILENT
INTERRUPT = types.FunctionResponseScheduling.INTERRUPT


def tool_call_msg(call_id: str, name: str = "get_time") -> dict[str, Any]:
    return {"toolCall": {"functionCalls": [{"id": call_id, "name": name}]}}


def test_scheduling_rule_for_answers_that_arrive_in_time() -> None:
    assert pick_scheduling(ToolAnswer({"time": "12:00"})) is WHEN_IDLE  # asked for: when idle
    assert pick_scheduling(ToolAnswer({})) is SILENT  # a side effect with nothing to say
    assert pick_scheduling(ToolAnswer({"error": "timed out"})) is WHEN_IDLE
    assert pick_scheduling(ToolAnswer({"alarm": "now"}, INTERRUPT)) is INTERRUPT  # declared


def test_non_blocking_answers_are_scheduled_and_go_silent_after_a_barge_in() -> None:
    p = proto()  # gemini-3.8-live: NON_BLOCKING
    connect(p)
    receive(p, tool_call_msg("c1"))
    receive(p, tool_call_msg("c2"))
    receive(p, tool_call_msg("c3"))
    answer = ToolAnswer({"time": "12:00"})
    first = p.tool_answered("c1", answer)
    assert first is not None and first.scheduling is WHEN_IDLE and first.id == "c1"
    p.interrupt()  # the user barged in while c2 and c3 ran
    late = p.tool_answered("c2", ToolAnswer({"alarm": "now"}, INTERRUPT))
    assert late is not None and late.scheduling is SILENT and late.response == {"alarm": "now"}
    receive(p, {"serverContent": {"interrupted": True}})  # the server's VAD counts too
    receive(p, tool_call_msg("c4"))
    assert p.tool_answered("c4", answer).scheduling is WHEN_IDLE  # made after the barge-in
    receive(p, {"toolCallCancellation": {"ids": ["c3"]}})
    assert p.tool_answered("c3", answer) is None  # cancelled: nothing is sent
    assert p.tool_answered("c1", answer) is None  # answered once only


def test_blocking_answers_carry_no_scheduling_and_are_dropped_after_a_barge_in() -> None:
    p = proto(model="gemini-3.1-flash-live-preview")
    connect(p)
    receive(p, tool_call_msg("b1"))
    receive(p, tool_call_msg("b2"))
    on_time = p.tool_answered("b1", ToolAnswer({"time": "12:00"}))
    assert on_time is not None and on_time.scheduling is None
    p.interrupt()
    assert p.tool_answered("b2", ToolAnswer({"time": "12:00"})) is None
    receive(p, tool_call_msg("b3"))
    p.connection_closed()  # calls do not outlive their connection
    assert p.tool_answered("b3", ToolAnswer({"time": "12:00"})) is None


def test_a_tool_may_ask_for_blocking_where_the_family_lets_it() -> None:
    p = LiveProtocol(
        GeminiConfig(), RECONNECT, random=lambda: 0.0, tool_behaviors={"lock": ToolCalls.BLOCKING}
    )
    p.started()
    p.open()
    connect(p)
    receive(p, tool_call_msg("l1", name="lock"))
    assert p.tool_answered("l1", ToolAnswer({"locked": True})).scheduling is None
    assert declaration_behavior(GEMINI_3_8_LIVE, None) is types.Behavior.NON_BLOCKING
    assert declaration_behavior(GEMINI_3_8_LIVE, ToolCalls.BLOCKING) is types.Behavior.BLOCKING
    assert declaration_behavior(GEMINI_3_1_FLASH_LIVE, ToolCalls.NON_BLOCKING) is None
    assert declaration_behavior(GEMINI_2_5_NATIVE_AUDIO, None) is None


@pytest.mark.shelf
@pytest.mark.parametrize("step_s", [5 * 3600.0, -5 * 3600.0], ids=["forward", "backward"])
def test_a_wall_clock_step_neither_discards_a_fresh_handle_nor_keeps_a_stale_one(
    step_s: float,
) -> None:
    """NTP steps the wall clock after boot: a handle received in this run is aged on the
    monotonic clock, so a fresh one survives the step and an old one still expires."""
    book = HandleBook(validity_s=7200.0)
    book.received("h", MODEL, WALL, now=100.0)
    fresh = book.usable(MODEL, WALL + step_s + 60.0, now=160.0)
    assert fresh == (StoredHandle("h", WALL, MODEL), None)
    assert book.age_s(WALL + step_s, now=160.0) == 60.0
    handle, why_not = book.usable(MODEL, WALL + step_s + 60.0, now=100.0 + 7200.0)
    assert handle is None and why_not is not None and "age 7200" in why_not
    # A handle from the file (no monotonic stamp) is aged by the wall clock.
    book.loaded_from_store(StoredHandle("old", WALL - 3 * 3600.0, MODEL))
    assert book.usable(MODEL, WALL, now=160.0)[0] is None

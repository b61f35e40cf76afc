"""The Live API emulator, driven by the real google-genai SDK (and raw websockets where the
SDK cannot express a case) over real TLS on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.genai import errors, types
from sim_fixtures import (
    KEY,
    MODEL,
    audio_of,
    b64,
    chunks,
    collect_turn,
    emulator,
    is_turn_complete,
    label,
    live_config,
    next_message,
    noise_pcm,
    output_text,
    raw_connect,
    raw_setup,
    recv_json,
    recv_until,
    run,
    sdk_client,
    send_audio,
    send_json,
    silence_pcm,
    squash,
)
from websockets.exceptions import ConnectionClosed, InvalidStatus

from edge_agent_devkit.emulator import (
    EmulatorOptions,
    EmulatorRecord,
    FaultSpec,
    LiveEmulator,
    SessionRecord,
    voice,
)
from edge_agent_devkit.emulator import protocol as proto
from edge_agent_devkit.emulator.faults import parse_fault_arg
from edge_agent_devkit.emulator.vad import EnergyVad
from edge_agent_devkit.rig import speech

pytestmark = pytest.mark.timeout(90)

REPLY_ORDER = [
    "not_resumable",
    "input_tx",
    "reply",
    "gen_complete",
    "turn_complete",
]


def user_text(text: str) -> types.Content:
    return types.Content(role="user", parts=[types.Part(text=text)])


async def spoken_turn(session: object, audio: bytes) -> None:
    await session.send_realtime_input(activity_start=types.ActivityStart())  # type: ignore[attr-defined]
    await send_audio(session, audio)
    await session.send_realtime_input(activity_end=types.ActivityEnd())  # type: ignore[attr-defined]


# ---------------------------------------------------------------- pure parts


def test_names_normalise_to_camel_but_user_data_stays_verbatim() -> None:
    message = proto.parse_client_message(
        json.dumps(
            {
                "tool_response": {
                    "function_responses": [
                        {"id": "1", "name": "f", "response": {"some_key": {"inner_key": 1}}}
                    ]
                }
            }
        )
    )
    response = message["toolResponse"]["functionResponses"][0]
    assert response["response"] == {"some_key": {"inner_key": 1}}
    with pytest.raises(proto.ProtocolError) as unknown:
        proto.parse_client_message('{"realtimeInput": {"audio": {"data": "", "rate": 1}}}')
    assert unknown.value.code == 1007 and 'Unknown name "rate"' in unknown.value.reason
    with pytest.raises(proto.ProtocolError) as twice:
        proto.parse_client_message('{"realtime_input": {}, "realtimeInput": {}}')
    assert twice.value.code == 1007
    with pytest.raises(proto.ProtocolError):
        proto.parse_client_message(b"\xff not json")
    assert len(proto.close_reason("x" * 500).encode()) == 123


def test_energy_vad_finds_start_and_end_at_frame_positions() -> None:
    vad = EnergyVad(min_speech_ms=60, silence_ms=200)
    audio = silence_pcm(0.5) + noise_pcm(1.0, seed=1) + silence_pcm(0.5)
    events = []
    for piece in chunks(audio, 1234):  # odd sizes: frames straddle messages
        events += vad.feed(piece)
    assert [e.kind for e in events] == ["start", "end"]
    assert events[0].sample == 8000 and events[1].sample == 24000
    assert vad.speech_seconds() == 1.0


def test_transcript_pieces_rebuild_the_text_and_fault_args_parse() -> None:
    text = "You spoke for  1.8 seconds. "
    assert "".join(voice.transcript_pieces(text)) == text
    spread = voice.spread(voice.transcript_pieces(text), 3)
    assert sum(len(p) for p in spread) == len(voice.transcript_pieces(text))
    conn, spec = parse_fault_arg("2:go_away:time_left_s=1.5,at_s=3")
    assert conn == 2 and spec == FaultSpec("go_away", at_s=3.0, time_left_s=1.5)
    with pytest.raises(ValueError):
        FaultSpec("no_such_fault")
    with pytest.raises(ValueError):
        FaultSpec("go_away", delay_s=1)


def test_record_bounds_and_snapshot_restore() -> None:
    record = EmulatorRecord(max_messages=10)
    for i in range(25):
        record.add_message(0, {"clientContent": {"turns": [], "n": i}})
    assert len(record.messages) <= 10 and record.messages_dropped == 25 - len(record.messages)
    assert record.messages[-1][1]["clientContent"]["n"] == 24
    session = SessionRecord(max_audio_bytes=4)
    session.append_audio(b"abc")
    snap = session.snapshot()
    session.append_audio(b"def")
    assert (session.consumed_audio, session.consumed_audio_len) == (b"abcd", 6)
    assert not session.audio_complete
    session.restore(snap)
    assert (session.consumed_audio, session.consumed_audio_len) == (b"abc", 3)
    assert session.audio_complete


# ---------------------------------------------------------------- turns through the SDK


def test_text_turn_through_the_sdk() -> None:
    async def body() -> None:
        async with emulator(reply_text="It is noon, more or less.") as emu:
            client = sdk_client(emu)
            async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
                first = await next_message(session)
                assert label(first) == "handle"  # a fresh handle right after setupComplete
                await session.send_client_content(turns=user_text("What time is it?"))
                messages = await collect_turn(session)
                assert squash([label(m) for m in messages]) == REPLY_ORDER
                assert messages[1].server_content.input_transcription.text == "What time is it?"
                assert output_text(messages) == "It is noon, more or less."
                usage = messages[-1].usage_metadata
                assert usage is not None and usage.total_token_count
                handle = await next_message(session)
                assert label(handle) == "handle"
                got = audio_of(messages)
                assert got and got == bytes(emu.record.replies[0].audio)
                # realtimeInput.text is a turn of its own too
                await session.send_realtime_input(text="And tomorrow?")
                messages = await collect_turn(session)
                assert squash([label(m) for m in messages]) == REPLY_ORDER
            (session_record,) = emu.record.sessions
            turns = [(t.kind, t.transcript, t.ended_by) for t in session_record.turns]
            assert turns == [
                ("text", "What time is it?", "turnComplete"),
                ("text", "And tomorrow?", "text"),
            ]
            assert emu.record.replies[0].completed
            conn = emu.record.connections[0]
            await emu.wait_until(lambda: conn.closed_by is not None)
            assert (conn.closed_by, conn.close_code) == ("client", 1000)

    run(body)


def test_audio_turn_with_activity_markers_gives_ordered_24k_reply() -> None:
    async def body() -> None:
        async with emulator(reply_text=None) as emu:
            client = sdk_client(emu)
            async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
                await next_message(session)  # post-setup handle
                ignored = noise_pcm(0.3, seed=9)  # outside activityStart/End: not consumed
                await send_audio(session, ignored)
                audio = noise_pcm(1.8, seed=2)
                await spoken_turn(session, audio)
                messages = await collect_turn(session)
                labels = [label(m) for m in messages]
                assert squash(labels) == REPLY_ORDER
                assert labels.count("audio") > 1
                tx = messages[1].server_content.input_transcription.text
                assert tx == "(1.8 s of speech)"
                assert output_text(messages) == "You spoke for 1.8 seconds."
                got = audio_of(messages)
                assert len(got) % 2 == 0 and got == bytes(emu.record.replies[0].audio)
                # reply audio comes in reply_chunk_ms (40 ms = 1920 bytes at 24 kHz) parts
                sizes = {len(audio_of([m])) for m in messages if label(m) == "audio"}
                assert max(sizes) == 1920
            (record,) = emu.record.sessions
            assert record.consumed_audio == audio
            assert record.turns[0].audio_bytes == len(audio)
            assert record.turns[0].ended_by == "activityEnd"

    run(body)


def test_server_vad_ends_the_turn_on_audio_stream_end_and_on_silence() -> None:
    if not speech.espeak_available():
        pytest.skip("espeak-ng not installed")
    spoken = speech.synthesize("Turn on the kitchen lights please.").astype("<i2").tobytes()
    first, end = speech.active_bounds(speech.synthesize("Turn on the kitchen lights please."))

    async def body() -> None:
        async with emulator() as emu:
            client = sdk_client(emu)
            config = live_config(vad=True)
            async with client.aio.live.connect(model=MODEL, config=config) as session:
                await next_message(session)
                await send_audio(session, spoken)
                await session.send_realtime_input(audio_stream_end=True)
                messages = await collect_turn(session)
                assert squash([label(m) for m in messages]) == REPLY_ORDER
                await next_message(session)  # handle
                # second turn: the VAD itself ends it after the trailing silence
                await send_audio(session, spoken + silence_pcm(1.0))
                messages = await collect_turn(session)
                assert "gen_complete" in [label(m) for m in messages]
            (record,) = emu.record.sessions
            assert [t.ended_by for t in record.turns] == ["audioStreamEnd", "vad"]
            assert record.consumed_audio == spoken + spoken + silence_pcm(1.0)
            # the detected speech spans espeak's active samples, to the 20 ms frame
            expected_s = (end - first) / 16000
            for turn in record.turns:
                assert abs(turn.speech_s - expected_s) <= 0.1
            assert record.turns[0].transcript == f"({record.turns[0].speech_s:.1f} s of speech)"

    run(body)


def test_activity_start_with_server_vad_on_is_1007() -> None:
    async def body() -> None:
        async with emulator() as emu:
            client = sdk_client(emu)
            async with client.aio.live.connect(model=MODEL, config=live_config(vad=True)) as s:
                await s.send_realtime_input(activity_start=types.ActivityStart())
                with pytest.raises(errors.APIError) as caught:
                    await collect_turn(s)
                assert caught.value.code == 1007

    run(body)


def test_activity_start_interrupts_a_reply() -> None:
    long_reply = bytes(24000 * 2 * 10)  # 10 s: cannot finish before we interrupt

    async def body() -> None:
        async with emulator(pace=1.0, reply_audio_pcm=long_reply) as emu:
            client = sdk_client(emu)
            async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
                await next_message(session)
                await session.send_client_content(turns=user_text("Tell me a long story"))
                seen: list[types.LiveServerMessage] = []
                async for message in session.receive():
                    seen.append(message)
                    if label(message) == "audio":
                        await session.send_realtime_input(activity_start=types.ActivityStart())
                        break
                seen += await collect_turn(session)
                labels = [label(m) for m in seen]
                assert "gen_complete" not in labels
                assert labels[-2:] == ["interrupted", "turn_complete"]
                assert label(await next_message(session)) == "handle"
                reply = emu.record.replies[0]
                assert reply.interrupted and not reply.completed
                assert 0 < len(reply.audio) < len(long_reply)
                assert audio_of(seen) == bytes(reply.audio)
                # the interrupting activity becomes the next turn
                await send_audio(session, noise_pcm(0.5, seed=3))
                await session.send_realtime_input(activity_end=types.ActivityEnd())
                second = [label(await next_message(session)) for _ in range(2)]
                assert second == ["not_resumable", "input_tx"]  # a new reply begins
                assert emu.record.sessions[0].turns[1].transcript == "(0.5 s of speech)"

    run(body)


def test_speech_energy_interrupts_a_reply_with_server_vad() -> None:
    long_reply = bytes(24000 * 2 * 10)

    async def body() -> None:
        async with emulator(pace=1.0, reply_audio_pcm=long_reply) as emu:
            client = sdk_client(emu)
            async with client.aio.live.connect(model=MODEL, config=live_config(vad=True)) as s:
                await next_message(s)
                await s.send_client_content(turns=user_text("Talk to me"))
                seen: list[types.LiveServerMessage] = []
                async for message in s.receive():
                    seen.append(message)
                    if label(message) == "audio":
                        await send_audio(s, noise_pcm(0.3, seed=4))  # the user talks over it
                        break
                seen += await collect_turn(s)
                assert [label(m) for m in seen][-2:] == ["interrupted", "turn_complete"]
                assert emu.record.replies[0].interrupted

    run(body)


def test_new_client_content_interrupts_unless_no_interruption() -> None:
    async def turn_during_reply(handling: types.ActivityHandling | None) -> list[str]:
        """Labels of the first reply (a second turn is sent at its first audio) and of
        the next few messages."""
        # 10 s when it will be interrupted; 0.5 s when it must play to its end
        seconds = 0.5 if handling is not None else 10.0
        reply = bytes(round(24000 * 2 * seconds))
        async with emulator(pace=1.0, reply_audio_pcm=reply) as emu:
            client = sdk_client(emu)
            config = live_config()
            if handling is not None:
                config.realtime_input_config.activity_handling = handling
            async with client.aio.live.connect(model=MODEL, config=config) as session:
                await next_message(session)
                await session.send_client_content(turns=user_text("first"))
                labels: list[str] = []
                async for message in session.receive():
                    labels.append(label(message))
                    if labels[-1] == "audio" and labels.count("audio") == 1:
                        await session.send_client_content(turns=user_text("second"))
                labels += [label(await next_message(session)) for _ in range(3)]
                return squash(labels)

    async def body() -> None:
        interrupted = await turn_during_reply(None)
        assert interrupted == [
            "not_resumable",
            "input_tx",
            "reply",
            "interrupted",
            "turn_complete",
            "handle",
            "not_resumable",  # the second turn's reply begins
            "input_tx",
        ]
        queued = await turn_during_reply(types.ActivityHandling.NO_INTERRUPTION)
        # the first reply runs to its end, then the second turn is answered
        assert queued == [*REPLY_ORDER, "handle", "not_resumable", "input_tx"]

    run(body)


BLOCKING_CASES = [
    ("gemini-3.1-flash-live-preview", None),
    ("gemini-2.5-flash-native-audio-preview-12-2025", None),
    ("gemini-3.8-live", types.Behavior.BLOCKING),  # 3.8 lets a declaration ask for it
]


@pytest.mark.parametrize(("model", "behavior"), BLOCKING_CASES)
def test_tool_call_round_trip_waits_for_the_matching_response(
    model: str, behavior: types.Behavior | None
) -> None:
    get_time = types.FunctionDeclaration(
        name="get_time", description="Local time.", behavior=behavior
    )

    async def body() -> None:
        async with emulator(tool_args={"get_time": {"zone": "local"}}) as emu:
            client = sdk_client(emu)
            config = live_config(tools=[types.Tool(function_declarations=[get_time])])
            async with client.aio.live.connect(model=model, config=config) as session:
                await next_message(session)
                await session.send_client_content(turns=user_text("Please use get_time"))
                seen: list[types.LiveServerMessage] = []
                async for message in session.receive():
                    seen.append(message)
                    if message.tool_call is not None:
                        break
                (call,) = seen[-1].tool_call.function_calls
                assert call.name == "get_time" and call.args == {"zone": "local"} and call.id
                # a response for another id is ignored; the matching one resumes the reply
                await session.send_tool_response(
                    function_responses=types.FunctionResponse(
                        id="someone-else", name="get_time", response={"x": 1}
                    )
                )
                await session.send_tool_response(
                    function_responses=types.FunctionResponse(
                        id=call.id, name="get_time", response={"time": "12:00"}
                    )
                )
                seen += await collect_turn(session)
                assert squash([label(m) for m in seen]) == [
                    "not_resumable",
                    "input_tx",
                    "tool_call",
                    "reply",
                    "gen_complete",
                    "turn_complete",
                ]
                assert '"time": "12:00"' in output_text(seen)
            (tool_call,) = emu.record.replies[0].tool_calls
            assert tool_call["id"] == call.id and tool_call["response"] == {"time": "12:00"}

    run(body)


BLOCKING_MODEL = "gemini-3.1-flash-live-preview"


def test_tool_call_cancellation_option_and_on_interruption() -> None:
    """A BLOCKING call (3.1): cancelled by the option, and by the user's interruption."""
    lights = types.FunctionDeclaration(name="set_lights", description="Lights on/off.")
    config = live_config(tools=[types.Tool(function_declarations=[lights])])

    async def body() -> None:
        async with emulator(cancel_tool_calls=True) as emu:
            client = sdk_client(emu)
            async with client.aio.live.connect(model=BLOCKING_MODEL, config=config) as session:
                await next_message(session)
                await session.send_client_content(turns=user_text("set lights on"))
                messages = await collect_turn(session)
                labels = [label(m) for m in messages]
                assert labels.index("tool_call") + 1 == labels.index("tool_cancel")
                call_id = messages[labels.index("tool_call")].tool_call.function_calls[0].id
                cancelled = messages[labels.index("tool_cancel")].tool_call_cancellation
                assert cancelled.ids == [call_id]
                assert "gen_complete" in labels
        async with emulator(force_tool_call=True) as emu:
            client = sdk_client(emu)
            async with client.aio.live.connect(model=BLOCKING_MODEL, config=config) as session:
                await next_message(session)
                await session.send_client_content(turns=user_text("hello"))
                seen: list[types.LiveServerMessage] = []
                async for message in session.receive():
                    seen.append(message)
                    if message.tool_call is not None:
                        break
                call_id = seen[-1].tool_call.function_calls[0].id
                # the user speaks before the tool answers: cancelled, then interrupted
                await session.send_realtime_input(activity_start=types.ActivityStart())
                rest = await collect_turn(session)
                assert [label(m) for m in rest] == ["tool_cancel", "interrupted", "turn_complete"]
                assert rest[0].tool_call_cancellation.ids == [call_id]

    run(body)


# ---- NON_BLOCKING calls (3.8) and the scheduling of their answers ----

GET_TIME = types.FunctionDeclaration(name="get_time", description="Local time.")
TOOLS = [types.Tool(function_declarations=[GET_TIME])]


async def _call_and_first_reply(session: object) -> tuple[str, list[types.LiveServerMessage]]:
    """A text turn that makes the model call get_time: (call id, the turn's messages)."""
    await session.send_client_content(turns=user_text("what is the time"))  # type: ignore[attr-defined]
    messages = await collect_turn(session)
    calls = [m for m in messages if m.tool_call is not None]
    assert len(calls) == 1
    return calls[0].tool_call.function_calls[0].id, messages


def _answer(call_id: str, scheduling: types.FunctionResponseScheduling) -> types.FunctionResponse:
    return types.FunctionResponse(
        id=call_id, name="get_time", response={"time": "12:00"}, scheduling=scheduling
    )


def test_non_blocking_call_does_not_hold_the_reply_and_when_idle_waits_for_its_end() -> None:
    async def body() -> None:
        reply_text = "Let me check that for you now."
        async with emulator(force_tool_call=True, pace=1.0, reply_text=reply_text) as emu:
            client = sdk_client(emu)
            config = live_config(tools=TOOLS)
            async with client.aio.live.connect(model=MODEL, config=config) as session:
                await next_message(session)
                await session.send_client_content(turns=user_text("what is the time"))
                seen: list[types.LiveServerMessage] = []
                async for message in session.receive():
                    seen.append(message)
                    if message.tool_call is not None:
                        break
                call_id = seen[-1].tool_call.function_calls[0].id
                # answered at once, while the holding reply still plays (paced)
                when_idle = types.FunctionResponseScheduling.WHEN_IDLE
                await session.send_tool_response(function_responses=_answer(call_id, when_idle))
                seen += await collect_turn(session)
                labels = squash([label(m) for m in seen])
                assert labels[labels.index("tool_call") + 1 :][:3] == [
                    "reply",
                    "gen_complete",
                    "turn_complete",
                ]
                assert "12:00" not in output_text(seen)  # not spoken over the first reply
                answer = await collect_turn(session)
                assert '"time": "12:00"' in output_text(answer)
                assert squash([label(m) for m in answer])[-2:] == ["gen_complete", "turn_complete"]
            first, spoken = emu.record.replies
            assert first.completed and first.text == "Let me check that for you now."
            assert spoken.answers_call == call_id and spoken.scheduling == "WHEN_IDLE"
            assert spoken.turn_index == -1 and spoken.completed
            assert first.tool_calls[0]["spoken"] is True

    run(body)


def test_silent_answer_is_not_spoken_and_interrupt_cuts_the_reply() -> None:
    async def body() -> None:
        async with emulator(force_tool_call=True) as emu:
            client = sdk_client(emu)
            async with client.aio.live.connect(model=MODEL, config=live_config(tools=TOOLS)) as s:
                await next_message(s)
                call_id, _ = await _call_and_first_reply(s)
                await next_message(s)  # the post-turn handle
                silent = types.FunctionResponseScheduling.SILENT
                await s.send_tool_response(function_responses=_answer(call_id, silent))
                with pytest.raises(TimeoutError):
                    await next_message(s, timeout=1.0)  # nothing is said
                assert len(emu.record.replies) == 1
                entry = emu.record.replies[0].tool_calls[0]
                assert entry["scheduling"] == "SILENT" and entry["spoken"] is False
        async with emulator(force_tool_call=True, pace=1.0) as emu:
            client = sdk_client(emu)
            async with client.aio.live.connect(model=MODEL, config=live_config(tools=TOOLS)) as s:
                await next_message(s)
                call_id, _ = await _call_and_first_reply(s)
                await next_message(s)
                await s.send_client_content(
                    turns=user_text("tell me a long story"), turn_complete=True
                )
                story = s.receive()
                first = await story.__anext__()
                while first.server_content is None or first.server_content.model_turn is None:
                    first = await story.__anext__()  # the story has started playing
                await story.aclose()
                urgent = types.FunctionResponseScheduling.INTERRUPT
                await s.send_tool_response(function_responses=_answer(call_id, urgent))
                rest = await collect_turn(s)
                assert squash([label(m) for m in rest])[-2:] == ["interrupted", "turn_complete"]
                answer = await collect_turn(s)
                assert '"time": "12:00"' in output_text(answer)
            story_reply = emu.record.replies[1]
            assert story_reply.interrupted and not story_reply.completed
            assert emu.record.replies[2].scheduling == "INTERRUPT"

    run(body)


def test_server_cancels_a_non_blocking_call_and_an_interruption_does_not() -> None:
    async def body() -> None:
        async with emulator(force_tool_call=True, pace=1.0) as emu:
            client = sdk_client(emu)
            async with client.aio.live.connect(model=MODEL, config=live_config(tools=TOOLS)) as s:
                await next_message(s)
                await s.send_client_content(turns=user_text("what is the time"))
                seen: list[types.LiveServerMessage] = []
                async for message in s.receive():
                    seen.append(message)
                    if message.tool_call is not None:
                        break
                call_id = seen[-1].tool_call.function_calls[0].id
                # the user talks over the holding reply: interrupted, the call survives
                await s.send_realtime_input(activity_start=types.ActivityStart())
                rest = await collect_turn(s)
                assert "tool_cancel" not in [label(m) for m in rest]
                assert emu.record.replies[0].interrupted
                emu.inject(FaultSpec("cancel_tool_calls"))
                cancel = await next_message(s)
                while cancel.tool_call_cancellation is None:  # the handle may come first
                    cancel = await next_message(s)
                assert cancel.tool_call_cancellation.ids == [call_id]
                when_idle = types.FunctionResponseScheduling.WHEN_IDLE
                await s.send_tool_response(function_responses=_answer(call_id, when_idle))
                await s.send_realtime_input(activity_end=types.ActivityEnd())
                turn = await collect_turn(s)
                assert "12:00" not in output_text(turn)  # a cancelled call's answer is ignored
            entry = emu.record.replies[0].tool_calls[0]
            assert entry["cancelled"] is True and "response" not in entry
            assert [r.answers_call for r in emu.record.replies] == [None, None]

    run(body)


def test_proactive_audio_ignores_speech_not_addressed_to_the_device() -> None:
    async def body() -> None:
        async with emulator(not_addressed_below_ms=300, not_addressed_marker="[aside]") as emu:
            client = sdk_client(emu)
            async with client.aio.live.connect(model=MODEL, config=live_config()) as s:
                await next_message(s)
                await spoken_turn(s, noise_pcm(0.2, seed=1))
                ignored = await collect_turn(s)
                assert [label(m) for m in ignored] == ["input_tx", "turn_complete"]
                await next_message(s)  # its handle
                await s.send_client_content(turns=user_text("[aside] pass the salt"))
                assert "turn_complete" in [label(m) for m in await collect_turn(s)]
                await next_message(s)
                await spoken_turn(s, noise_pcm(0.5, seed=2))
                answered = await collect_turn(s)
                assert "reply" in squash([label(m) for m in answered])
            turns = emu.record.sessions[-1].turns
            assert [t.addressed for t in turns] == [False, False, True]
            assert [r.turn_index for r in emu.record.replies] == [2]
            # 3.1 has no proactive audio: the same short turn is answered
            async with client.aio.live.connect(model=BLOCKING_MODEL, config=live_config()) as s:
                await next_message(s)
                await spoken_turn(s, noise_pcm(0.2, seed=1))
                assert "reply" in squash([label(m) for m in await collect_turn(s)])

    run(body)


def test_control_commands_retire_a_model_and_inject_a_fault() -> None:
    from edge_agent_devkit.emulator.__main__ import run_command

    async def body() -> None:
        async with emulator() as emu:
            assert (
                run_command(emu, "retire gemini-3.8-live\n") == "control: retired gemini-3.8-live"
            )
            assert "gemini-3.8-live" in emu.retired_models
            assert run_command(emu, "fault go_away:time_left_s=5") == "control: injected go_away"
            assert run_command(emu, "launch rockets").startswith("control: error")
            assert run_command(emu, "fault nonsense").startswith("control: error")

    run(body)


def test_text_modality_replies_with_text_parts() -> None:
    async def body() -> None:
        async with emulator(reply_text="Plain words back.") as emu:
            client = sdk_client(emu)
            config = types.LiveConnectConfig(response_modalities=[types.Modality.TEXT])
            async with client.aio.live.connect(model=MODEL, config=config) as session:
                await session.send_client_content(turns=user_text("hi"))
                messages = await collect_turn(session)
                text = "".join(m.text or "" for m in messages)
                assert text == "Plain words back."
                assert not audio_of(messages)

    run(body)


def test_espeak_reply_is_real_speech_at_24k() -> None:
    if not speech.espeak_available():
        pytest.skip("espeak-ng not installed")
    text = "Hello from the emulator."

    async def body() -> None:
        async with emulator(espeak=True, reply_text=text) as emu:
            client = sdk_client(emu)
            async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
                await session.send_client_content(turns=user_text("hi"))
                messages = await collect_turn(session)
                got = audio_of(messages)
        expected = speech.trim(
            speech.synthesize(text, voice="en-us", speed_wpm=175, sample_rate=24000)
        )
        assert got == expected.astype("<i2").tobytes()
        assert got != voice.tone_pcm(text)

    run(body)


def test_pace_one_streams_in_real_time() -> None:
    reply = bytes(24000 * 2 // 2)  # 0.5 s

    async def body() -> None:
        async with emulator(pace=1.0, reply_audio_pcm=reply) as emu:
            client = sdk_client(emu)
            async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
                asked = time.monotonic()  # the reply cannot start before this
                await session.send_client_content(turns=user_text("hi"))
                stamps: list[float] = []
                async for message in session.receive():
                    if label(message) == "audio":
                        stamps.append(time.monotonic())
                # 13 chunks of 40 ms: the last one is sent 480 ms after the first
                assert len(stamps) == 13
                assert stamps[-1] - asked >= 0.48

    run(body)


# ---------------------------------------------------------------- resumption


def test_resumption_restores_consumed_audio_to_the_snapshot() -> None:
    first = noise_pcm(0.6, seed=10)
    second = noise_pcm(1.0, seed=11)
    half = len(second) // 2 // 3200 * 3200

    async def body() -> None:
        async with emulator() as emu:
            client = sdk_client(emu)
            async with client.aio.live.connect(model=MODEL, config=live_config()) as a:
                await next_message(a)
                await spoken_turn(a, first)
                await collect_turn(a)
                handle = (await next_message(a)).session_resumption_update.new_handle
                assert handle
                # the start of turn 2 reaches the server, then the connection goes away
                await a.send_realtime_input(activity_start=types.ActivityStart())
                await send_audio(a, second[:half])
                record = emu.record.sessions[0]
                await emu.wait_until(lambda: record.consumed_audio_len == len(first) + half)
            conn_a = emu.record.connections[0]
            await emu.wait_until(lambda: conn_a.closed_by is not None)
            resume = live_config(resumption=types.SessionResumptionConfig(handle=handle))
            async with client.aio.live.connect(model=MODEL, config=resume) as b:
                assert label(await next_message(b)) == "handle"
                (record,) = emu.record.sessions
                assert record.consumed_audio == first  # truncated back to the snapshot
                assert len(record.turns) == 1 and record.connections == 2
                # the client replays turn 2 in full
                await spoken_turn(b, second)
                messages = await collect_turn(b)
                assert "gen_complete" in [label(m) for m in messages]
            assert record.consumed_audio == first + second
            assert [t.audio_bytes for t in record.turns] == [len(first), len(second)]
            conn_b = emu.record.connections[1]
            assert conn_b.resumed_from_handle == handle and conn_b.resumed

    run(body)


def test_stale_expired_and_busy_handles_are_refused() -> None:
    async def body() -> None:
        async with emulator(handle_ttl_s=0.2) as emu:
            client = sdk_client(emu)
            bogus = live_config(resumption=types.SessionResumptionConfig(handle="emu-bogus"))
            with pytest.raises(errors.APIError) as unknown:
                async with client.aio.live.connect(model=MODEL, config=bogus):
                    pass
            assert unknown.value.code == 1007
            async with client.aio.live.connect(model=MODEL, config=live_config()) as a:
                handle = (await next_message(a)).session_resumption_update.new_handle
                again = live_config(resumption=types.SessionResumptionConfig(handle=handle))
                with pytest.raises(errors.APIError) as busy:
                    async with client.aio.live.connect(model=MODEL, config=again):
                        pass
                assert busy.value.code == 1011  # the old connection is still open
            await asyncio.sleep(0.3)  # past the 0.2 s handle lifetime
            with pytest.raises(errors.APIError) as expired:
                async with client.aio.live.connect(model=MODEL, config=again):
                    pass
            assert expired.value.code == 1007
            codes = [c.close_code for c in emu.record.connections]
            assert codes == [1007, 1000, 1011, 1007]

    run(body)


def test_transparent_resumption_and_media_chunks_are_1007() -> None:
    async def body() -> None:
        async with emulator() as emu:
            async with raw_connect(emu) as ws:
                await send_json(ws, raw_setup(sessionResumption={"transparent": True}))
                with pytest.raises(ConnectionClosed) as caught:
                    await recv_json(ws)
                assert caught.value.rcvd is not None and caught.value.rcvd.code == 1007
            client = sdk_client(emu)
            async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
                await session.send_realtime_input(
                    media=types.Blob(data=b"\x00\x00", mime_type="audio/pcm;rate=16000")
                )
                with pytest.raises(errors.APIError) as media:
                    while True:
                        await collect_turn(session)
                assert media.value.code == 1007 and "media_chunks" in str(media.value)

    run(body)


# ---------------------------------------------------------------- keys and protocol errors


def test_bad_key_is_1007_and_missing_key_is_1008_through_the_sdk() -> None:
    async def body() -> None:
        async with emulator() as emu:
            with pytest.raises(errors.APIError) as bad:
                async with sdk_client(emu, key="wrong").aio.live.connect(model=MODEL):
                    pass
            assert bad.value.code == 1007 and "API key not valid" in str(bad.value)
            empty = sdk_client(emu, headers={"x-goog-api-key": ""})
            with pytest.raises(errors.APIError) as missing:
                async with empty.aio.live.connect(model=MODEL):
                    pass
            assert missing.value.code == 1008
            # the key may also come as the `key` query parameter
            async with raw_connect(emu, key=None, query_key=KEY) as ws:
                await send_json(ws, raw_setup())
                assert await recv_json(ws) == {"setupComplete": {}}
            async with raw_connect(emu, key=None) as ws:
                await send_json(ws, raw_setup())
                with pytest.raises(ConnectionClosed) as none:
                    await recv_json(ws)
                assert none.value.rcvd is not None and none.value.rcvd.code == 1008

    run(body)


def test_snake_and_camel_messages_are_equivalent() -> None:
    audio = noise_pcm(0.4, seed=5)
    camel = [
        raw_setup(),
        {"realtimeInput": {"activityStart": {}}},
        {"realtimeInput": {"audio": {"data": b64(audio), "mimeType": "audio/pcm;rate=16000"}}},
        {"realtimeInput": {"activityEnd": {}}},
    ]
    snake = [
        {
            "setup": {
                "model": f"models/{MODEL}",
                "generation_config": {"response_modalities": ["AUDIO"]},
                "input_audio_transcription": {},
                "output_audio_transcription": {},
                "realtime_input_config": {"automatic_activity_detection": {"disabled": True}},
            }
        },
        {"realtime_input": {"activity_start": {}}},
        {"realtime_input": {"audio": {"data": b64(audio), "mime_type": "audio/pcm;rate=16000"}}},
        {"realtime_input": {"activity_end": {}}},
    ]

    async def body() -> None:
        async with emulator() as emu:
            for script in (camel, snake):
                async with raw_connect(emu) as ws:
                    for message in script:
                        await send_json(ws, message)
                    replies = await recv_until(ws, is_turn_complete)
                    assert replies[0] == {"setupComplete": {}}
                    assert any("generationComplete" in r.get("serverContent", {}) for r in replies)
            assert emu.record.messages_for(0) == emu.record.messages_for(1)
            assert [s.consumed_audio for s in emu.record.sessions] == [audio, audio]

    run(body)


@pytest.mark.parametrize(
    ("messages", "reason_part"),
    [
        ([raw_setup(bogusField=1)], 'Unknown name "bogusField"'),
        ([raw_setup(), raw_setup()], "setup"),
        ([{"clientContent": {"turnComplete": True}}], "first message"),
        ([raw_setup(), {"realtimeInput": {"activity_start": {"x": 1}}}], 'Unknown name "x"'),
        ([raw_setup(), {"realtimeInput": {"audio": {"data": "%%%"}}}], "base64"),
        ([raw_setup(), "{not json"], "Invalid JSON"),
    ],
)
def test_invalid_client_messages_close_with_1007(messages: list, reason_part: str) -> None:
    async def body() -> None:
        async with emulator() as emu, raw_connect(emu) as ws:
            for message in messages:
                await ws.send(message if isinstance(message, str) else json.dumps(message))
            with pytest.raises(ConnectionClosed) as caught:
                while True:
                    await recv_json(ws)
            assert caught.value.rcvd is not None
            assert caught.value.rcvd.code == 1007 and reason_part in caught.value.rcvd.reason

    run(body)


def test_wrong_path_and_http_status_fault_refuse_the_upgrade() -> None:
    async def body() -> None:
        faults = {1: [FaultSpec("http_status", status=503)]}
        async with emulator(connection_faults=faults) as emu:
            with pytest.raises(InvalidStatus) as wrong:
                async with raw_connect(emu, path="/ws/other.Service"):
                    pass
            assert wrong.value.response.status_code == 404
            with pytest.raises(InvalidStatus) as refused:
                async with sdk_client(emu).aio.live.connect(model=MODEL):
                    pass
            assert refused.value.response.status_code == 503

    run(body)


# ---------------------------------------------------------------- faults


def test_go_away_then_1008() -> None:
    async def body() -> None:
        faults = {0: [FaultSpec("go_away", time_left_s=0.2)]}
        async with emulator(connection_faults=faults) as emu:
            client = sdk_client(emu)
            async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
                await next_message(session)  # handle
                go_away = await next_message(session)
                assert go_away.go_away is not None and go_away.go_away.time_left == "0.2s"
                with pytest.raises(errors.APIError) as closed:
                    await next_message(session)
                assert closed.value.code == 1008 and "aborted" in str(closed.value)
            assert emu.record.connections[0].faults == ["go_away"]

    run(body)


def test_close_1011_and_drop_tcp_mid_reply() -> None:
    async def body() -> None:
        faults = {0: [FaultSpec("close_1011")], 1: [FaultSpec("drop_tcp", after_chunks=3)]}
        async with emulator(connection_faults=faults, reply_text="A " * 40) as emu:
            client = sdk_client(emu)
            for expected in (1011, 1006):
                async with client.aio.live.connect(model=MODEL, config=live_config()) as s:
                    await s.send_client_content(turns=user_text("hi"))
                    seen: list[types.LiveServerMessage] = []
                    with pytest.raises(errors.APIError) as caught:
                        async for message in s.receive():
                            seen.append(message)
                    assert caught.value.code == expected
                    assert "audio" in [label(m) for m in seen]  # it died mid-reply
            first, second = emu.record.connections
            await emu.wait_until(lambda: second.closed_by is not None)
            assert (first.close_code, first.closed_by) == (1011, "server")
            assert (second.close_code, second.closed_by) == (1006, "abort")
            assert [r.chunks_sent for r in emu.record.replies] == [2, 3]

    run(body)


def test_never_setup_leaves_the_client_waiting() -> None:
    async def body() -> None:
        async with emulator(connection_faults={0: [FaultSpec("never_setup")]}) as emu:
            client = sdk_client(emu)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.0):
                    async with client.aio.live.connect(model=MODEL, config=live_config()):
                        pass
            (conn,) = emu.record.connections
            assert not conn.setup_complete_sent
            assert "setup" in emu.record.messages_for(0)[0]

    run(body)


def test_bad_frame_and_unknown_message_are_sent_and_break_the_sdk() -> None:
    async def body() -> None:
        faults = {
            0: [FaultSpec("bad_frame"), FaultSpec("unknown_message")],
            1: [FaultSpec("bad_frame")],
            2: [FaultSpec("unknown_message")],
            3: [FaultSpec("unknown_message", after_messages=2)],
            4: [FaultSpec("bad_frame", at_s=0.2, data="garbage")],
        }
        async with emulator(connection_faults=faults) as emu:
            async with raw_connect(emu) as ws:
                await send_json(ws, raw_setup())
                assert await recv_json(ws) == {"setupComplete": {}}
                assert await asyncio.wait_for(ws.recv(), 5) == proto.BAD_FRAME
                assert await recv_json(ws) == {"someFutureMessage": {}}
            client = sdk_client(emu)
            for error in (ValueError, TypeError):
                async with client.aio.live.connect(model=MODEL) as session:
                    with pytest.raises(error):
                        await next_message(session)
            async with raw_connect(emu) as ws:  # connection 3: after the 2nd client message
                await send_json(ws, raw_setup())
                assert await recv_json(ws) == {"setupComplete": {}}
                await send_json(ws, {"clientContent": {"turns": [{"parts": [{"text": "x"}]}]}})
                assert await recv_json(ws) == {"someFutureMessage": {}}
            async with raw_connect(emu) as ws:  # connection 4: 0.2 s after setupComplete
                setup_sent = time.monotonic()  # the server's timer starts after this
                await send_json(ws, raw_setup())
                assert await recv_json(ws) == {"setupComplete": {}}
                assert await asyncio.wait_for(ws.recv(), 5) == b"garbage"
                assert time.monotonic() - setup_sent >= 0.2

    run(body)


def test_inject_applies_to_open_connections_now() -> None:
    async def body() -> None:
        async with emulator() as emu:
            client = sdk_client(emu)
            async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
                await next_message(session)
                emu.inject(FaultSpec("close_1011", reason="deadline expired"))
                with pytest.raises(errors.APIError) as caught:
                    await next_message(session)
                assert caught.value.code == 1011 and "deadline expired" in str(caught.value)

    run(body)


def test_late_and_missing_pongs() -> None:
    async def body() -> None:
        faults = {0: [FaultSpec("late_pong", delay_s=0.3)], 1: [FaultSpec("no_pong")]}
        async with emulator(connection_faults=faults) as emu:
            async with raw_connect(emu, ping_interval=None) as ws:
                await send_json(ws, raw_setup())
                await recv_json(ws)
                latency = await asyncio.wait_for(await ws.ping(), 5)
                assert latency >= 0.3
            async with raw_connect(emu, ping_interval=None) as ws:
                await send_json(ws, raw_setup())
                await recv_json(ws)
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(await ws.ping(), 0.5)
                # the connection itself still works: only pongs are missing
                await send_json(ws, {"clientContent": {"turnComplete": True}})
                assert (await recv_until(ws, is_turn_complete))[-1]["usageMetadata"]
            # through the SDK, a keepalive timeout ends receive() with an APIError
            client = sdk_client(emu, ping_interval=0.2, ping_timeout=0.3)
            emu_conn = len(emu.record.connections)
            async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
                await next_message(session)
                emu.inject(FaultSpec("no_pong"))
                with pytest.raises(errors.APIError):
                    await next_message(session, timeout=10)
            assert emu.record.connections[emu_conn].faults == ["no_pong"]

    run(body)


def test_setup_delay_and_message_delay_keep_order() -> None:
    async def body() -> None:
        faults = {0: [FaultSpec("delay", delay_s=0.02, jitter_s=0.02)]}
        async with emulator(setup_delay_s=0.3, connection_faults=faults, seed=1) as emu:
            client = sdk_client(emu)
            started = time.monotonic()
            async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
                assert time.monotonic() - started >= 0.3
                await next_message(session)
                await session.send_client_content(turns=user_text("hi"))
                messages = await collect_turn(session)
                assert squash([label(m) for m in messages]) == REPLY_ORDER

    run(body)


# ---------------------------------------------------------------- lifecycle and CLI


def test_stop_is_idempotent_and_leaves_no_tasks() -> None:
    async def body() -> None:
        baseline = asyncio.all_tasks()
        emu = LiveEmulator()
        await emu.stop()  # never started: nothing to do
        emu = LiveEmulator(
            EmulatorOptions(
                pace=1.0,
                espeak=False,
                reply_audio_pcm=bytes(24000 * 2 * 30),
                connection_faults={1: [FaultSpec("never_setup")]},
            )
        )
        await emu.start()
        async with raw_connect(emu) as busy, raw_connect(emu) as stuck:
            await send_json(busy, raw_setup())
            await send_json(busy, {"clientContent": {"turnComplete": True}})
            await recv_until(busy, lambda m: "modelTurn" in m.get("serverContent", {}))
            await send_json(stuck, raw_setup())
            await emu.wait_until(lambda: len(emu.record.messages) == 3)
            await emu.stop()
            await emu.stop()
            for ws in (busy, stuck):
                with pytest.raises(ConnectionClosed) as caught:
                    while True:
                        await asyncio.wait_for(ws.recv(), 10)
                assert caught.value.rcvd is not None and caught.value.rcvd.code == 1001
        assert asyncio.all_tasks() - baseline == set()
        assert not emu.ca_pem_path.exists()  # its private temp dir is gone

    run(body)


def test_cli_serves_until_sigterm_and_writes_the_record(tmp_path: Path) -> None:
    record_out = tmp_path / "record.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_agent_devkit.emulator",
            "--port",
            "0",
            "--ca-out",
            str(tmp_path / "ca"),
            "--pace",
            "0",
            "--no-espeak",
            "--reply-text",
            "Hello.",
            "--record-out",
            str(record_out),
            "--fault",
            "7:close_1011:reason=never reached",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["base_url"].startswith("https://127.0.0.1:")
        assert Path(info["ca_pem"]).parent == tmp_path / "ca"

        async def body() -> None:
            import ssl

            from google import genai

            client = genai.Client(
                api_key=KEY,
                http_options=types.HttpOptions(
                    base_url=info["base_url"],
                    async_client_args={"ssl": ssl.create_default_context(cafile=info["ca_pem"])},
                ),
            )
            async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
                await session.send_client_content(turns=user_text("hi"))
                messages = await collect_turn(session)
                assert output_text(messages) == "Hello."

        run(body)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        record = json.loads(record_out.read_text())
        assert record["sessions"][0]["turns"][0]["transcript"] == "hi"
        assert record["connections"][0]["close_code"] == 1000
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# ---------------------------------------------------------------- model families and lifecycle

NOT_FOUND = (
    "models/{} is not found for API version v1beta, or is not supported for bidiGenerateContent."
    " Call ListModels to see the list of available models and their supported methods."
)


async def _setup_answer(emu, model: str, config: types.LiveConnectConfig) -> int | None:
    """Connect with the SDK: None when setupComplete came, else the close code."""
    try:
        async with sdk_client(emu).aio.live.connect(model=model, config=config):
            return None
    except errors.APIError as exc:
        return exc.code


@pytest.mark.parametrize(
    ("model", "config", "code"),
    [
        ("gemini-3.8-live", types.LiveConnectConfig(), None),
        (
            "gemini-3.8-live",
            types.LiveConnectConfig(proactivity=types.ProactivityConfig(proactive_audio=False)),
            1007,
        ),
        (
            "gemini-3.8-live",
            types.LiveConnectConfig(proactivity=types.ProactivityConfig(proactive_audio=True)),
            None,
        ),
        ("gemini-3.8-live", types.LiveConnectConfig(enable_affective_dialog=False), 1007),
        (
            "gemini-3.8-live",
            types.LiveConnectConfig(
                thinking_config=types.ThinkingConfig(thinking_level=types.ThinkingLevel.LOW)
            ),
            1007,
        ),
        (
            "gemini-3.8-live-extended-thinking",
            types.LiveConnectConfig(
                thinking_config=types.ThinkingConfig(thinking_level=types.ThinkingLevel.HIGH)
            ),
            None,
        ),
        (
            "gemini-3.1-flash-live-preview",
            types.LiveConnectConfig(
                thinking_config=types.ThinkingConfig(thinking_level=types.ThinkingLevel.MINIMAL)
            ),
            None,
        ),
        (
            "gemini-2.5-flash-native-audio-preview-12-2025",
            types.LiveConnectConfig(
                enable_affective_dialog=True,
                proactivity=types.ProactivityConfig(proactive_audio=True),
                thinking_config=types.ThinkingConfig(thinking_budget=0),
            ),
            None,
        ),
        (
            "gemini-2.5-flash-native-audio-latest",
            types.LiveConnectConfig(
                thinking_config=types.ThinkingConfig(thinking_level=types.ThinkingLevel.LOW)
            ),
            1007,
        ),
    ],
    ids=[
        "3.8-plain",
        "3.8-proactive-false",
        "3.8-proactive-true",
        "3.8-affective",
        "3.8-thinking-level",
        "3.8-extended-level",
        "3.1-level",
        "2.5-opt-ins",
        "2.5-level",
    ],
)
def test_each_family_enforces_its_setup_rules(
    model: str, config: types.LiveConnectConfig, code: int | None
) -> None:
    async def body() -> None:
        async with emulator() as emu:
            assert await _setup_answer(emu, model, config) == code
            conn = emu.record.connections[0]
            assert conn.model == model and conn.setup_complete_sent is (code is None)
            if code is not None:
                assert conn.close_reason == "Request contains an invalid argument."

    run(body)


@pytest.mark.parametrize(
    "config",
    [
        types.LiveConnectConfig(enable_affective_dialog=False),
        types.LiveConnectConfig(proactivity=types.ProactivityConfig(proactive_audio=False)),
    ],
    ids=["affective", "proactivity"],
)
def test_3_1_with_affective_dialog_or_proactivity_never_completes_setup(config) -> None:
    async def body() -> None:
        async with emulator() as emu:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.0):
                    await _setup_answer(emu, "gemini-3.1-flash-live-preview", config)
            assert emu.record.connections[0].setup_complete_sent is False

    run(body)


def test_media_chunks_are_1007_on_3_1_too() -> None:
    async def body() -> None:
        async with emulator() as emu:
            client = sdk_client(emu)
            model = "gemini-3.1-flash-live-preview"
            async with client.aio.live.connect(model=model, config=live_config()) as session:
                await session.send_realtime_input(
                    media=types.Blob(data=b"\x00\x00", mime_type="audio/pcm;rate=16000")
                )
                with pytest.raises(errors.APIError) as media:
                    while True:
                        await collect_turn(session)
                assert media.value.code == 1007

    run(body)


@pytest.mark.parametrize(
    "model", ["gemini-2.0-flash-live-001", "gemini-emulated-native-audio", "gemini-2.5-flash"]
)
def test_unknown_retired_or_text_model_is_1008_not_found(model: str) -> None:
    async def body() -> None:
        async with emulator(retired_models=("gemini-2.0-flash-live-001",)) as emu:
            with pytest.raises(errors.APIError) as refused:
                async with sdk_client(emu).aio.live.connect(model=model):
                    pass
            assert refused.value.code == 1008
            reason = emu.record.connections[0].close_reason
            assert reason is not None
            # the full text is longer than a close frame can carry (123 bytes): a prefix
            assert NOT_FOUND.format(model).startswith(reason) and len(reason) > 60
            assert emu.record.connections[0].setup_complete_sent is False

    run(body)


def test_retiring_a_model_refuses_the_next_connection_only() -> None:
    async def body() -> None:
        async with emulator() as emu:
            client = sdk_client(emu)
            async with client.aio.live.connect(model=MODEL, config=live_config()) as open_one:
                emu.retire_model(MODEL)
                # the open connection keeps working
                await open_one.send_client_content(
                    turns=types.Content(role="user", parts=[types.Part(text="hello")])
                )
                assert audio_of(await collect_turn(open_one))
                with pytest.raises(errors.APIError) as refused:
                    async with client.aio.live.connect(model=MODEL, config=live_config()):
                        pass
                assert refused.value.code == 1008
                assert f"models/{MODEL} is not found" in str(refused.value)
            other = "gemini-3.1-flash-live-preview"
            async with client.aio.live.connect(model=other, config=live_config()):
                pass

    run(body)


def _rest_client(emu, key: str = KEY):
    from google import genai

    ctx = emu.client_ssl_context()
    return genai.Client(
        api_key=key,
        http_options=types.HttpOptions(
            base_url=emu.base_url,
            client_args={"verify": ctx},
            async_client_args={"ssl": ctx, "verify": ctx},
        ),
    )


def test_models_list_through_the_sdk_is_paged_and_names_live_models() -> None:
    async def body() -> None:
        async with emulator() as emu:
            client = _rest_client(emu)

            def sync_list() -> list[types.Model]:
                return list(client.models.list(config={"page_size": 3}))

            models = await asyncio.to_thread(sync_list)
            live = [m.name for m in models if "bidiGenerateContent" in (m.supported_actions or [])]
            assert "models/gemini-3.8-live" in live
            assert "models/gemini-3.1-flash-live-preview" in live
            assert "models/gemini-2.5-flash" not in live and len(models) == 8
            pager = await client.aio.models.list(config={"page_size": 3})
            assert len(pager.page) == 3  # one page at a time, then the next on demand
            names = [m.name async for m in pager]
            assert names == [m.name for m in models]

            emu.retire_model("gemini-3.8-live")
            after = [m.name async for m in await client.aio.models.list()]
            assert "models/gemini-3.8-live" not in after and len(after) == 7
            got = await client.aio.models.get(model="gemini-3.1-flash-live-preview")
            assert got.supported_actions == ["bidiGenerateContent"]
            with pytest.raises(errors.ClientError) as gone:
                await client.aio.models.get(model="gemini-3.8-live")
            assert gone.value.code == 404
            with pytest.raises(errors.ClientError) as bad:
                await _rest_client(emu, key="wrong").aio.models.get(model="gemini-3.8-live")
            assert bad.value.code == 400 and "API key not valid" in str(bad.value)
            # REST requests are not Live connections
            assert emu.record.connections == []

    run(body)

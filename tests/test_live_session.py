"""Live session layer: handle store, tools, connect config, and LiveSession driven with the
real google-genai SDK against the local Live API emulator over TLS."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import random
import stat
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from google import genai
from google.genai import types

from edge_agent.config import ConversationConfig, GeminiConfig, ReconnectConfig
from edge_agent.core.events import (
    ButtonPressed,
    ButtonReleased,
    GenerationCompleted,
    GoAwayReceived,
    InputTranscript,
    ModelAudioReceived,
    OutputTranscript,
    ServerInterrupted,
    SessionClosed,
    SessionLost,
    SessionReady,
    SpeechEnded,
    SpeechStarted,
    ToolCallCancelled,
    ToolCalled,
    TurnCompleted,
)
from edge_agent.core.policy import BargeInRules
from edge_agent.core.state import (
    CloseSession,
    ConversationMachine,
    InterruptSession,
    OpenSession,
    SendActivityEnd,
    SendActivityStart,
)
from edge_agent.live.connect_config import (
    WS_LOGGER_NAME,
    build_http_options,
    build_live_connect_config,
)
from edge_agent.live.handles import FILE_NAME, HandleStore
from edge_agent.live.session import LiveSession, SessionState
from edge_agent.live.tools import GET_TIME_DECLARATION, Tool, ToolRegistry, builtin_tools
from edge_agent_devkit.emulator import EmulatorOptions, FaultSpec, LiveEmulator
from edge_agent_devkit.rig.appliance import API_KEY as STAND_IN_KEY

# ---- handle store ------------------------------------------------------------------------


class FakeWall:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_handle_survives_a_restart_and_is_private(tmp_path: Path) -> None:
    wall = FakeWall()
    HandleStore(tmp_path / "state", wall_clock=wall).save("h-123", "m")
    path = tmp_path / "state" / FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [FILE_NAME]  # no tmp file left
    wall.t += 3600
    loaded = HandleStore(tmp_path / "state", wall_clock=wall).load("m")
    assert loaded is not None and loaded.handle == "h-123"
    assert "h-123" not in repr(loaded)


def test_expired_or_foreign_or_corrupt_handles_are_discarded(tmp_path: Path) -> None:
    wall = FakeWall()
    store = HandleStore(tmp_path, validity_s=100.0, wall_clock=wall)
    store.save("h", "m")
    assert store.load("other-model") is None
    assert not store.path.exists()
    store.save("h", "m")
    wall.t += 100.0
    assert store.load("m") is None and not store.path.exists()
    store.path.write_text("{not json")
    assert store.load("m") is None and not store.path.exists()
    assert store.load("m") is None  # missing file is fine


def test_save_replaces_atomically(tmp_path: Path) -> None:
    store = HandleStore(tmp_path, wall_clock=FakeWall())
    store.save("first", "m")
    store.save("second", "m")
    assert json.loads(store.path.read_text())["handle"] == "second"
    assert store.load("m").handle == "second"


# ---- tools --------------------------------------------------------------------------------


def test_get_time_and_unknown_tool_never_raise() -> None:
    fixed = datetime(2025, 3, 4, 14, 5, 9, tzinfo=timezone(timedelta(hours=1)))
    registry = builtin_tools(now=lambda: fixed)

    async def main() -> tuple[dict, dict, dict]:
        return (
            await registry.call("get_time", {}),
            await registry.call("launch_rockets", {"n": 3}),
            await broken.call("boom", None),
        )

    def boom(_args: object) -> dict:
        raise RuntimeError("bug")

    broken = ToolRegistry([Tool(types.FunctionDeclaration(name="boom"), boom)])
    ok, unknown, failed = asyncio.run(main())
    assert ok["local_time"] == "14:05" and ok["weekday"] == "Tuesday"
    assert ok["iso"] == "2025-03-04T14:05:09+01:00"
    assert "unknown tool" in unknown["error"]
    assert "RuntimeError" in failed["error"]
    assert [d.name for d in registry.declarations(["get_time", "nope"])] == ["get_time"]


# ---- connect config -----------------------------------------------------------------------


def test_connect_config_from_gemini_config() -> None:
    cfg = GeminiConfig(voice="Kore", language_code="de-DE", system_instruction="Be brief.")
    config = build_live_connect_config(cfg, "HANDLE", builtin_tools())
    assert config.response_modalities == [types.Modality.AUDIO]
    assert config.speech_config.voice_config.prebuilt_voice_config.voice_name == "Kore"
    assert config.speech_config.language_code == "de-DE"
    assert config.system_instruction == "Be brief."
    assert config.input_audio_transcription is not None
    assert config.output_audio_transcription is not None
    assert config.realtime_input_config.automatic_activity_detection.disabled is True
    assert config.context_window_compression.trigger_tokens == cfg.compression_trigger_tokens
    assert (
        config.context_window_compression.sliding_window.target_tokens
        == cfg.compression_target_tokens
    )
    assert config.session_resumption.handle == "HANDLE"
    assert config.session_resumption.transparent is None
    assert config.tools[0].function_declarations[0].name == "get_time"


def test_connect_config_server_vad_and_options_off() -> None:
    cfg = GeminiConfig(
        server_vad=True,
        server_vad_start_sensitivity="high",
        server_vad_end_sensitivity="low",
        server_vad_prefix_padding_ms=200,
        server_vad_silence_ms=900,
        input_transcription=False,
        output_transcription=False,
        context_window_compression=False,
        session_resumption=False,
        tools=[],
    )
    config = build_live_connect_config(cfg, "ignored", builtin_tools())
    vad = config.realtime_input_config.automatic_activity_detection
    assert vad.disabled is False
    assert vad.start_of_speech_sensitivity == types.StartSensitivity.START_SENSITIVITY_HIGH
    assert vad.end_of_speech_sensitivity == types.EndSensitivity.END_SENSITIVITY_LOW
    assert (vad.prefix_padding_ms, vad.silence_duration_ms) == (200, 900)
    assert config.input_audio_transcription is None and config.output_audio_transcription is None
    assert config.context_window_compression is None and config.session_resumption is None
    assert config.tools is None


def test_keepalive_and_logger_reach_the_sdk_websocket_args() -> None:
    """The SDK filters async_client_args by ws_connect's signature: ours must survive."""
    cfg = GeminiConfig(
        base_url="https://127.0.0.1:9", keepalive_ping_interval_s=31, keepalive_ping_timeout_s=62
    )
    client = genai.Client(api_key="k", http_options=build_http_options(cfg))
    ws_args = client._api_client._websocket_ssl_ctx  # what live.connect passes to ws_connect
    assert ws_args["ping_interval"] == 31 and ws_args["ping_timeout"] == 62
    assert ws_args["logger"].name == WS_LOGGER_NAME
    assert "close_timeout" in ws_args and "ssl" in ws_args
    client.close()


# ---- LiveSession against the emulator ------------------------------------------------------

# The suite's random stand-in key: tests/conftest.py sweeps every log and file for it.
KEY = STAND_IN_KEY
CHUNK = 640  # 20 ms of 16 kHz s16le


def pcm(seed: int, seconds: float) -> bytes:
    """Deterministic noise: every byte differs by position, so byte equality means something."""
    n = int(seconds * 32_000) // 2 * 2
    return random.Random(seed).randbytes(n)


def chunks(data: bytes, size: int = CHUNK) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


class Recorder:
    """The event sink: keeps every event, wakes waiters."""

    def __init__(self) -> None:
        self.events: list[object] = []
        self._changed = asyncio.Event()

    def __call__(self, event: object) -> None:
        self.events.append(event)
        self._changed.set()

    def of(self, cls: type) -> list:
        return [e for e in self.events if isinstance(e, cls)]

    async def wait_for(self, cls: type, count: int = 1, timeout: float = 20.0):
        async with asyncio.timeout(timeout):
            while True:
                found = self.of(cls)
                if len(found) >= count:
                    return found[count - 1]
                self._changed.clear()
                await self._changed.wait()

    def model_audio(self) -> bytes:
        return b"".join(e.pcm24k for e in self.of(ModelAudioReceived))


class MiniDaemon(Recorder):
    """The daemon's side of a conversation, with the real conversation machine: session
    events go to the machine, a reply chunk plays only while the machine is
    not ``policy.reply_audio_stale`` (the one place that decides what audio is stale, as in
    ``Daemon._on_live_event``), and the machine's session actions reach the session."""

    def __init__(self) -> None:
        super().__init__()
        self.machine = ConversationMachine(ConversationConfig(), barge_in=BargeInRules())
        self.session: LiveSession | None = None
        self.played: list[bytes] = []

    def __call__(self, event: object) -> None:
        super().__call__(event)
        if isinstance(event, ModelAudioReceived):
            if self.machine.policy.reply_audio_stale:
                return  # the rest of a reply the user barged into
            self.played.append(event.pcm24k)
        self.feed(event)

    def feed(self, event: object) -> None:
        session = self.session
        assert session is not None
        for action in self.machine.handle(event, time.monotonic()):
            if isinstance(action, OpenSession):
                session.open()
            elif isinstance(action, CloseSession):
                session.close()
            elif isinstance(action, SendActivityStart):
                session.activity_start()
            elif isinstance(action, SendActivityEnd):
                session.activity_end()
            elif isinstance(action, InterruptSession):
                session.interrupt()

    def press(self) -> None:
        self.feed(ButtonPressed())
        self.feed(ButtonReleased())

    async def say(self, audio: bytes) -> None:
        """The ears hear a whole utterance: speech start, the audio, speech end."""
        assert self.session is not None
        self.feed(SpeechStarted(0))
        for c in chunks(audio):
            self.session.send_audio(c)
            await asyncio.sleep(0)
        self.feed(SpeechEnded(len(audio) // 2))


class FakeTime:
    """Policy clock + sleep that advance instantly: hours of backoff in milliseconds.

    A sleep that would pass ``limit_s`` blocks for good (until cancelled), so a test can
    count what happened within the window without racing the next attempt.
    """

    def __init__(self, limit_s: float = float("inf")) -> None:
        self.now = 0.0
        self.limit_s = limit_s
        self.parked = asyncio.Event()

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay_s: float) -> None:
        if self.now + delay_s > self.limit_s:
            self.parked.set()
            await asyncio.Event().wait()
        self.now += delay_s
        await asyncio.sleep(0)


FAST_RECONNECT = ReconnectConfig(initial_delay_s=0.05, max_delay_s=0.2, jitter=0.0)


def gemini_cfg(emu: LiveEmulator, **overrides: object) -> GeminiConfig:
    values: dict[str, object] = dict(
        base_url=emu.base_url, ca_file=str(emu.ca_pem_path), setup_timeout_s=5.0
    )
    values.update(overrides)
    return GeminiConfig(**values)


def run(coro_fn, timeout: float = 60.0) -> None:
    async def main() -> None:
        async with asyncio.timeout(timeout):
            await coro_fn()

    asyncio.run(main())


class Rig:
    """An emulator plus a LiveSession wired to it; everything torn down on exit."""

    def __init__(
        self,
        tmp_path: Path,
        options: EmulatorOptions | None = None,
        key: str = KEY,
        reconnect: ReconnectConfig = FAST_RECONNECT,
        fake_time: FakeTime | None = None,
        tools: ToolRegistry | None = None,
        events: Recorder | None = None,
        **cfg: object,
    ) -> None:
        self.tools = tools
        self.options = options or EmulatorOptions(valid_api_keys=(KEY,), pace=0.0, espeak=False)
        self.key = key
        self.reconnect = reconnect
        self.fake_time = fake_time
        self.cfg_overrides = cfg
        self.state_dir = tmp_path / "state"
        self.events = events if events is not None else Recorder()
        self.emu: LiveEmulator
        self.session: LiveSession

    async def __aenter__(self) -> Rig:
        self.emu = LiveEmulator(self.options)
        await self.emu.start()
        self.session = self.new_session()
        if isinstance(self.events, MiniDaemon):
            self.events.session = self.session
        self.session.start()
        return self

    def new_session(self) -> LiveSession:
        extra = {}
        if self.fake_time is not None:
            extra = dict(clock=self.fake_time.clock, sleep=self.fake_time.sleep)
        return LiveSession(
            gemini_cfg(self.emu, **self.cfg_overrides),
            self.reconnect,
            lambda: self.key,
            self.state_dir,
            self.events,
            tools=self.tools,
            **extra,
        )

    async def __aexit__(self, *exc: object) -> None:
        await self.session.stop()
        await self.emu.stop()

    def client_messages(self, key: str) -> list[tuple[int, dict]]:
        return [(i, m) for i, m in self.emu.record.messages if key in m]

    async def speak_turn(self, audio: bytes, pace_s: float = 0.0) -> None:
        self.session.activity_start()
        for c in chunks(audio):
            self.session.send_audio(c)
            await asyncio.sleep(pace_s)
        self.session.activity_end()


def test_turn_round_trip_and_idle_close(tmp_path: Path) -> None:
    async def body() -> None:
        async with Rig(tmp_path) as rig:
            rig.session.open()
            ready = await rig.events.wait_for(SessionReady)
            assert ready.resumed is False and rig.session.ready
            await rig.speak_turn(pcm(5, 0.5))
            await rig.events.wait_for(TurnCompleted)
            kinds = [type(e) for e in rig.events.events]
            assert kinds.index(GenerationCompleted) < kinds.index(TurnCompleted)
            assert rig.events.of(OutputTranscript)
            reply = rig.emu.record.replies[0]
            assert rig.events.model_audio() == bytes(reply.audio) and reply.audio
            ends = [m for _, m in rig.client_messages("realtimeInput") if _activity_end(m)]
            assert len(ends) == 1 and not rig.client_messages("clientContent")
            rig.session.close()
            await rig.events.wait_for(SessionClosed)
            assert rig.session.state is SessionState.IDLE
            conn = rig.emu.record.connections[0]
            await wait_until(lambda: conn.closed_by is not None)
            assert conn.closed_by == "client" and conn.close_code == 1000

    run(body)


def _activity_end(message: dict) -> bool:
    realtime = message["realtimeInput"]
    return "activityEnd" in realtime or "activity_end" in realtime


def _activity_start(message: dict) -> bool:
    realtime = message["realtimeInput"]
    return "activityStart" in realtime or "activity_start" in realtime


def test_audio_turn_with_transcripts_and_24k_audio(tmp_path: Path) -> None:
    async def body() -> None:
        async with Rig(tmp_path) as rig:
            rig.session.open()
            await rig.events.wait_for(SessionReady)
            audio = pcm(1, 1.0)
            await rig.speak_turn(audio)
            await rig.events.wait_for(TurnCompleted)
            assert rig.events.of(InputTranscript)
            assert rig.events.of(OutputTranscript)
            got = rig.events.model_audio()
            assert got and len(got) % 2 == 0 and got == bytes(rig.emu.record.replies[0].audio)
            session = rig.emu.record.sessions[-1]
            assert session.consumed_audio == audio
            assert session.turns[0].audio_bytes == len(audio)
            # uplink used realtimeInput.audio (mediaChunks would have been a 1007)
            audio_msgs = [m for _, m in rig.client_messages("realtimeInput")]
            assert all("mediaChunks" not in m["realtimeInput"] for m in audio_msgs)

    run(body)


def test_barge_in_interrupts_the_reply_and_drops_its_rest(tmp_path: Path) -> None:
    """The button during a reply: the session opens the user's turn (one activityStart,
    which the speech that follows reuses), the server interrupts, and the conversation
    machine plays nothing more of that reply, then all of the next one."""
    options = EmulatorOptions(
        valid_api_keys=(KEY,),
        pace=1.0,
        espeak=False,
        reply_text="Once upon a time the sea and the wind told each other a long story.",
    )
    daemon = MiniDaemon()

    async def body() -> None:
        async with Rig(tmp_path, options, events=daemon) as rig:
            daemon.press()  # opens the session through the machine
            await rig.events.wait_for(SessionReady)
            first = pcm(2, 0.4)
            await daemon.say(first)
            await wait_until(lambda: len(daemon.played) >= 2)
            heard = len(daemon.played)
            daemon.press()  # button: stop talking, I want to speak
            await rig.events.wait_for(ServerInterrupted)
            await rig.events.wait_for(TurnCompleted)
            assert len(daemon.played) == heard  # nothing after the barge-in
            assert not rig.events.of(GenerationCompleted)
            assert rig.emu.record.replies[0].interrupted
            question = pcm(3, 0.5)
            await daemon.say(question)
            await rig.events.wait_for(TurnCompleted, count=2)
            await rig.events.wait_for(GenerationCompleted)
            second = rig.emu.record.replies[1]
            assert second.completed and b"".join(daemon.played[heard:]) == bytes(second.audio)
            starts = [m for _, m in rig.client_messages("realtimeInput") if _activity_start(m)]
            assert len(starts) == 2  # one per user turn: the barge-in's opened the second
            assert rig.emu.record.sessions[-1].consumed_audio == first + question

    run(body)


def test_tool_call_round_trip(tmp_path: Path) -> None:
    options = EmulatorOptions(valid_api_keys=(KEY,), pace=0.0, espeak=False, force_tool_call=True)

    async def body() -> None:
        async with Rig(tmp_path, options) as rig:
            rig.session.open()
            await rig.events.wait_for(SessionReady)
            await rig.speak_turn(pcm(4, 0.3))
            called = await rig.events.wait_for(ToolCalled)
            assert called.name == "get_time" and called.call_id
            await rig.events.wait_for(TurnCompleted)
            # On 3.8 the call is non-blocking: the holding reply may complete before the
            # tool (on a worker thread) has answered, so wait for the answer to arrive.
            async with asyncio.timeout(10):
                while not rig.client_messages("toolResponse"):
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)  # a second (wrong) response would show up by now
            responses = [m for _, m in rig.client_messages("toolResponse")]
            assert len(responses) == 1
            (response,) = responses[0]["toolResponse"]["functionResponses"]
            assert response["id"] == called.call_id and response["name"] == "get_time"
            assert "local_time" in response["response"]
            assert rig.emu.record.connections and len(rig.emu.record.connections) == 1

    run(body)


BLOCKING_MODEL = "gemini-3.1-flash-live-preview"


def test_tool_call_cancelled_by_barge_in(tmp_path: Path) -> None:
    """A BLOCKING family (3.1): the server cancels the call the user barged into."""
    started = []

    async def first_call_hangs(_args: object) -> dict:
        started.append(True)
        if len(started) == 1:
            await asyncio.sleep(3600)  # never answers: only a cancellation ends it
        return {"local_time": "12:00"}

    tools = ToolRegistry([Tool(GET_TIME_DECLARATION, first_call_hangs)])
    options = EmulatorOptions(valid_api_keys=(KEY,), pace=0.0, espeak=False, force_tool_call=True)

    async def body() -> None:
        async with Rig(tmp_path, options, tools=tools, model=BLOCKING_MODEL) as rig:
            rig.session.open()
            await rig.events.wait_for(SessionReady)
            await rig.speak_turn(pcm(6, 0.3))
            called = await rig.events.wait_for(ToolCalled)
            await wait_until(lambda: started)
            rig.session.interrupt()
            cancelled = await rig.events.wait_for(ToolCallCancelled)
            assert cancelled.call_ids == (called.call_id,)
            await rig.events.wait_for(TurnCompleted)
            await wait_until(lambda: rig.session.status().tool_calls_running == 0)
            assert not rig.client_messages("toolResponse")
            assert rig.emu.record.replies[0].tool_calls[0]["id"] == called.call_id
            rig.session.send_audio(pcm(3, 0.2))
            rig.session.activity_end()
            await rig.events.wait_for(TurnCompleted, count=2)
            assert len(rig.emu.record.connections) == 1

    run(body)


def test_drop_mid_utterance_resumes_without_losing_a_byte(tmp_path: Path) -> None:
    async def body() -> None:
        async with Rig(tmp_path) as rig:
            rig.session.open()
            await rig.events.wait_for(SessionReady)
            first = pcm(10, 0.6)
            await rig.speak_turn(first)
            await rig.events.wait_for(TurnCompleted)
            await wait_until(lambda: rig.session.status().replay.covered == 1)
            second = pcm(11, 1.0)
            half = len(second) // 2 // CHUNK * CHUNK
            rig.session.activity_start()
            for c in chunks(second[:half]):
                rig.session.send_audio(c)
            await wait_until(lambda: consumed_len(rig) == len(first) + half)
            rig.emu.inject(FaultSpec("drop_tcp"))
            await rig.events.wait_for(SessionLost)
            for c in chunks(second[half:]):  # the user keeps talking while we reconnect
                rig.session.send_audio(c)
                await asyncio.sleep(0)
            rig.session.activity_end()
            ready = await rig.events.wait_for(SessionReady, count=2)
            assert ready.resumed
            await rig.events.wait_for(TurnCompleted, count=2)
            (session,) = rig.emu.record.sessions
            assert session.consumed_audio == first + second
            assert [t.audio_bytes for t in session.turns] == [len(first), len(second)]
            assert rig.emu.record.connections[1].resumed_from_handle is not None
            lost = rig.events.of(SessionLost)[0]
            assert not lost.fatal and "1006" in lost.reason

    run(body)


def test_close_1011_mid_reply_replays_the_unanswered_turn(tmp_path: Path) -> None:
    options = EmulatorOptions(
        valid_api_keys=(KEY,),
        pace=0.0,
        espeak=False,
        connection_faults={0: [FaultSpec("close_1011")]},  # mid-reply of the first reply
    )

    async def body() -> None:
        async with Rig(tmp_path, options) as rig:
            rig.session.open()
            await rig.events.wait_for(SessionReady)
            audio = pcm(20, 0.8)
            await rig.speak_turn(audio)
            lost = await rig.events.wait_for(SessionLost)
            assert "1011" in lost.reason and not lost.fatal
            assert (await rig.events.wait_for(SessionReady, count=2)).resumed
            await rig.events.wait_for(TurnCompleted)
            (session,) = rig.emu.record.sessions
            assert session.consumed_audio == audio  # replayed once, not duplicated
            assert len(session.turns) == 1
            # What the session hands the daemon: the fragment and the question's words
            # before the drop; after it, the words again (asked again) and the whole reply.
            events = rig.events.events
            cut, whole = rig.emu.record.replies
            after = events[events.index(lost) :]
            before = events[: events.index(lost)]
            assert b"".join(e.pcm24k for e in before if isinstance(e, ModelAudioReceived)) == (
                bytes(cut.audio)
            )
            assert b"".join(e.pcm24k for e in after if isinstance(e, ModelAudioReceived)) == (
                bytes(whole.audio)
            )
            assert not cut.completed and whole.completed and len(cut.audio) < len(whole.audio)
            heard_before = sum(isinstance(e, InputTranscript) for e in before)
            heard_after = sum(isinstance(e, InputTranscript) for e in after)
            assert (heard_before, heard_after) == (1, 1)

    run(body)


def test_go_away_hands_over_after_the_reply_without_a_gap(tmp_path: Path) -> None:
    options = EmulatorOptions(valid_api_keys=(KEY,), pace=4.0, espeak=False)

    def audio_sent_on(rig: Rig, index: int) -> int:
        return sum(
            len(base64.urlsafe_b64decode(m["realtimeInput"]["audio"]["data"]))
            for i, m in rig.client_messages("realtimeInput")
            if i == index and "audio" in m["realtimeInput"]
        )

    async def body() -> None:
        async with Rig(tmp_path, options) as rig:
            rig.session.open()
            await rig.events.wait_for(SessionReady)
            # 1) goAway while the reply is streaming: the reply plays to the end first
            first = pcm(30, 0.5)
            await rig.speak_turn(first)
            await rig.events.wait_for(ModelAudioReceived)
            rig.emu.inject(FaultSpec("go_away", time_left_s=20.0))
            await rig.events.wait_for(GoAwayReceived)
            assert (await rig.events.wait_for(SessionReady, count=2)).resumed
            reply = rig.emu.record.replies[0]
            assert reply.completed and not reply.interrupted
            assert rig.events.model_audio() == bytes(reply.audio)  # not one sample cut
            kinds = [type(e) for e in rig.events.events]
            assert kinds.index(TurnCompleted) < kinds.index(SessionReady, 1)
            old = rig.emu.record.connections[0]
            await wait_until(lambda: old.closed_by is not None)
            assert old.closed_by == "client" and old.close_code == 1000  # before the 1008
            # 2) goAway while the user is mid-utterance: no gap in the user's audio
            second = pcm(31, 1.0)
            speaking = asyncio.ensure_future(rig.speak_turn(second, pace_s=0.004))
            await wait_until(lambda: consumed_len(rig) >= len(first) + len(second) // 4)
            rig.emu.inject(FaultSpec("go_away", time_left_s=20.0))
            await speaking
            assert (await rig.events.wait_for(SessionReady, count=3)).resumed
            await rig.events.wait_for(TurnCompleted, count=2)
            assert not rig.events.of(SessionLost)
            (session,) = rig.emu.record.sessions
            assert session.consumed_audio == first + second
            assert [t.audio_bytes for t in session.turns] == [len(first), len(second)]
            assert audio_sent_on(rig, 1) > 0 and audio_sent_on(rig, 2) > 0  # it spanned both
            assert len(rig.emu.record.connections) == 3
            assert rig.session.status().handovers == 2

    run(body)


def test_refused_handle_falls_back_to_a_fresh_session_with_unanswered_speech(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        rig = Rig(tmp_path)
        HandleStore(rig.state_dir).save("stale-handle-from-yesterday", GeminiConfig().model)
        async with rig:
            audio = pcm(40, 0.5)
            rig.session.activity_start()  # spoken before the session is even up
            for c in chunks(audio):
                rig.session.send_audio(c)
            rig.session.activity_end()
            rig.session.open()
            ready = await rig.events.wait_for(SessionReady)
            assert ready.resumed is False
            await rig.events.wait_for(TurnCompleted)
            first, second = rig.emu.record.connections[:2]
            assert first.resumed_from_handle == "stale-handle-from-yesterday"
            assert first.close_code == 1007 and second.resumed_from_handle is None
            assert rig.emu.record.sessions[-1].consumed_audio == audio
            assert not rig.events.of(SessionLost)[0].fatal

    run(body)


def test_expired_handle_after_a_drop_resends_only_the_unanswered_turn(tmp_path: Path) -> None:
    options = EmulatorOptions(valid_api_keys=(KEY,), pace=0.0, espeak=False, handle_ttl_s=0.0)

    async def body() -> None:
        async with Rig(tmp_path, options) as rig:
            rig.session.open()
            await rig.events.wait_for(SessionReady)
            answered = pcm(50, 0.4)
            await rig.speak_turn(answered)
            await rig.events.wait_for(TurnCompleted)
            pending = pcm(51, 0.4)
            rig.session.activity_start()
            for c in chunks(pending):
                rig.session.send_audio(c)
            await wait_until(lambda: consumed_len(rig) == len(answered) + len(pending))
            rig.emu.inject(FaultSpec("drop_tcp"))
            rig.session.activity_end()
            await wait_until(lambda: len(rig.emu.record.sessions) == 2, timeout=20)
            await rig.events.wait_for(TurnCompleted, count=2)
            old, fresh = rig.emu.record.sessions
            assert old.consumed_audio == answered + pending
            assert fresh.consumed_audio == pending  # not the answered turn again

    run(body)


async def wait_until(predicate, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def consumed_len(rig: Rig) -> int:
    sessions = rig.emu.record.sessions
    return len(sessions[-1].consumed_audio) if sessions else 0


def test_bad_key_retries_slowly_with_a_clear_error_and_never_logs_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="websockets")  # whatever other tests configured
    bad_key = "AIzaBAD-key-0123456789abcdefghijklmnop"
    fake = FakeTime(limit_s=3600.0)

    async def body() -> None:
        async with Rig(tmp_path, key=bad_key, fake_time=fake) as rig:
            rig.session.open()
            await asyncio.wait_for(fake.parked.wait(), timeout=30)
            attempts = len(rig.emu.record.connections)
            # at t=0, then every fatal_retry_delay_s (300 s) up to t=3600: 13 in an hour
            assert attempts == 13 and fake.now == 3600.0
            status = rig.session.status()
            assert status.state is SessionState.FATAL and status.fatal
            assert "API key not valid" in status.last_error and bad_key not in status.last_error
            lost = rig.events.of(SessionLost)
            assert lost[0].fatal and lost[0].retry_in_s == FAST_RECONNECT.fatal_retry_delay_s
            assert all(c.close_code == 1007 for c in rig.emu.record.connections)
            # a reload with the right key leaves the fatal state at once
            rig.key = KEY
            rig.session.config_changed(rig.session.cfg)
            await rig.events.wait_for(SessionReady)
            assert rig.session.status().state is SessionState.READY

    run(body)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("API key not valid" in r.getMessage() for r in errors)
    # Client-side records only: the emulator's own websockets server logs the request
    # headers it received (a test fixture, not the appliance).
    client_records = [
        r
        for r in caplog.records
        if not r.name.startswith(("websockets.server", "edge_agent_devkit.emulator"))
    ]
    for record in client_records:
        text = record.getMessage() + (record.exc_text or "") + str(record.args or "")
        assert bad_key not in text and KEY not in text, record.name
    # the handshake headers were logged, with the key masked
    handshake = [r.getMessage() for r in client_records if "x-goog-api-key" in r.getMessage()]
    assert handshake and all("[REDACTED]" in line for line in handshake)


def test_missing_key_is_fatal_without_connecting(tmp_path: Path) -> None:
    fake = FakeTime()

    async def body() -> None:
        async with Rig(tmp_path, key="", fake_time=fake) as rig:
            rig.session.open()
            lost = await rig.events.wait_for(SessionLost)
            assert lost.fatal and "no API key" in lost.reason
            assert rig.emu.record.connections == []

    run(body)


def test_setup_that_never_completes_times_out_and_retries(tmp_path: Path) -> None:
    options = EmulatorOptions(
        valid_api_keys=(KEY,),
        pace=0.0,
        espeak=False,
        connection_faults={0: [FaultSpec("never_setup")]},
    )

    async def body() -> None:
        async with Rig(tmp_path, options, setup_timeout_s=1.0) as rig:
            rig.session.open()
            lost = await rig.events.wait_for(SessionLost)
            assert "setupComplete" in lost.reason and not lost.fatal
            await rig.events.wait_for(SessionReady)
            assert len(rig.emu.record.connections) == 2

    run(body)


def test_bad_frames_cost_one_message_not_the_session(tmp_path: Path) -> None:
    async def body() -> None:
        async with Rig(tmp_path) as rig:
            rig.session.open()
            await rig.events.wait_for(SessionReady)
            rig.emu.inject(FaultSpec("bad_frame"))
            rig.emu.inject(FaultSpec("unknown_message"))
            await wait_until(lambda: rig.session.status().bad_frames == 2)
            await rig.speak_turn(pcm(7, 0.3))
            await rig.events.wait_for(TurnCompleted)
            assert len(rig.emu.record.connections) == 1 and not rig.events.of(SessionLost)

    run(body)


def test_handle_survives_a_daemon_restart(tmp_path: Path) -> None:
    async def body() -> None:
        async with Rig(tmp_path) as rig:
            rig.session.open()
            await rig.events.wait_for(SessionReady)
            first = pcm(60, 0.4)
            await rig.speak_turn(first)
            await rig.events.wait_for(TurnCompleted)
            await wait_until(lambda: rig.session.status().replay.covered == 1)
            await rig.session.stop()
            assert rig.events.of(SessionClosed)
            rig.session = rig.new_session()  # a new process, same state dir
            rig.session.start()
            rig.session.open()
            ready = await rig.events.wait_for(SessionReady, count=2)
            assert ready.resumed
            second = pcm(61, 0.4)
            await rig.speak_turn(second)
            await rig.events.wait_for(TurnCompleted, count=2)
            (session,) = rig.emu.record.sessions
            assert session.consumed_audio == first + second

    run(body)


def test_silent_peer_is_detected_by_keepalive(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that stops answering pings: the log says so (with the timeout), not the
    SDK's "closed 1006: abnormal closure [internal]", and the session comes back."""
    caplog.set_level(logging.INFO, logger="edge_agent")

    async def body() -> None:
        async with Rig(
            tmp_path, keepalive_ping_interval_s=0.2, keepalive_ping_timeout_s=0.4
        ) as rig:
            rig.session.open()
            await rig.events.wait_for(SessionReady)
            rig.emu.inject(FaultSpec("no_pong"))
            lost = await rig.events.wait_for(SessionLost, timeout=20)
            assert not lost.fatal
            expected = "the server stopped answering keepalive pings (no pong within 0.4 s)"
            assert lost.reason == expected  # plain words: no "network:" prefix (STATUS shows it)
            await rig.events.wait_for(SessionReady, count=2)
            conn = rig.emu.record.connections[0]
            assert (conn.close_code, conn.close_reason, conn.closed_by) == (
                1011,
                "keepalive ping timeout",
                "client",
            )
            lines = [r.getMessage() for r in caplog.records if "connection lost" in r.getMessage()]
            assert len(lines) == 1 and expected in lines[0], lines
            assert "1006" not in lines[0] and "abnormal" not in lines[0]

    run(body)


def test_slow_pongs_within_the_timeout_keep_the_session(tmp_path: Path) -> None:
    async def body() -> None:
        async with Rig(
            tmp_path, keepalive_ping_interval_s=0.2, keepalive_ping_timeout_s=3.0
        ) as rig:
            rig.session.open()
            await rig.events.wait_for(SessionReady)
            rig.emu.inject(FaultSpec("late_pong", delay_s=0.5))
            await asyncio.sleep(1.5)  # several pings answered late
            await rig.speak_turn(pcm(8, 0.3))
            await rig.events.wait_for(TurnCompleted)
            assert not rig.events.of(SessionLost) and len(rig.emu.record.connections) == 1

    run(body)


def test_two_hundred_connect_drop_cycles_leak_no_tasks_or_sockets(tmp_path: Path) -> None:
    fake = FakeTime()

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def body() -> None:
        rig = Rig(tmp_path, fake_time=fake)
        async with rig:
            await rig.session.stop()  # measure with no session at all
            tasks_before = asyncio.all_tasks()
            fds_before = fds()
            rig.session = rig.new_session()
            rig.session.start()
            readies = 0
            for i in range(200):  # each cycle: connect, a real drop, reconnect, idle close
                rig.session.open()
                readies += 1
                await rig.events.wait_for(SessionReady, count=readies)
                rig.emu.inject(FaultSpec("drop_tcp" if i % 2 else "close_1011"))
                await rig.events.wait_for(SessionLost, count=i + 1)
                readies += 1
                await rig.events.wait_for(SessionReady, count=readies)
                rig.session.close()
                await rig.events.wait_for(SessionClosed, count=i + 1)
            assert len(rig.emu.record.connections) == 400
            closes = [c.close_code for c in rig.emu.record.connections]
            assert closes[0::2] == [1011, 1006] * 100  # 200 drops, each a real one
            assert closes[1::2] == [1000] * 200  # and 200 idle closes
            await rig.session.stop()
            await wait_until(lambda: asyncio.all_tasks() == tasks_before, timeout=10)
            await wait_until(lambda: fds() <= fds_before, timeout=10)
            assert fds() == fds_before

    run(body, timeout=240)


def test_speech_while_connecting_is_buffered_and_sent_after_setup(tmp_path: Path) -> None:
    options = EmulatorOptions(valid_api_keys=(KEY,), pace=0.0, espeak=False, setup_delay_s=0.5)

    async def body() -> None:
        async with Rig(tmp_path, options) as rig:
            rig.session.open()  # wake word: the user keeps talking while setup runs
            audio = pcm(70, 0.8)
            await rig.speak_turn(audio, pace_s=0.002)
            assert not rig.events.of(SessionReady)  # all of it spoken before setupComplete
            await rig.events.wait_for(TurnCompleted)
            assert rig.emu.record.sessions[-1].consumed_audio == audio

    run(body)


def test_server_vad_mode_sends_audio_stream_end_not_activity_markers(tmp_path: Path) -> None:
    async def body() -> None:
        async with Rig(tmp_path, server_vad=True) as rig:
            rig.session.open()
            await rig.events.wait_for(SessionReady)
            audio = pcm(80, 0.6)
            await rig.speak_turn(audio)
            await rig.events.wait_for(TurnCompleted)
            realtime = [m["realtimeInput"] for _, m in rig.client_messages("realtimeInput")]
            assert not any("activityStart" in m or "activityEnd" in m for m in realtime)
            assert sum("audioStreamEnd" in m for m in realtime) == 1
            (session,) = rig.emu.record.sessions
            assert session.consumed_audio == audio
            assert session.turns[0].ended_by in ("audioStreamEnd", "vad")
            assert rig.session.status().replay.entries == 0  # the handle covered it all

    run(body)


@pytest.mark.parametrize(
    ("fault", "fatal", "code"),
    [
        (FaultSpec("http_status", status=503), False, None),
        (FaultSpec("http_status", status=403), True, None),
        (FaultSpec("missing_key"), True, 1008),
    ],
)
def test_refusals_before_setup_are_classified(
    tmp_path: Path, fault: FaultSpec, fatal: bool, code: int | None
) -> None:
    options = EmulatorOptions(
        valid_api_keys=(KEY,), pace=0.0, espeak=False, connection_faults={0: [fault]}
    )
    fake = FakeTime(limit_s=FAST_RECONNECT.fatal_retry_delay_s - 1.0)

    async def body() -> None:
        async with Rig(tmp_path, options, fake_time=fake) as rig:
            rig.session.open()
            lost = await rig.events.wait_for(SessionLost)
            assert lost.fatal is fatal
            if code is not None:
                assert rig.emu.record.connections[0].close_code == code
            if fatal:
                assert rig.session.status().state is SessionState.FATAL
                await asyncio.wait_for(fake.parked.wait(), timeout=20)
                assert len(rig.emu.record.connections) == 1  # nothing before the 300 s mark
                assert rig.session.status().retry_in_s == FAST_RECONNECT.fatal_retry_delay_s
            else:
                await rig.events.wait_for(SessionReady)

    run(body)


def test_go_away_deadline_hands_over_mid_reply_and_the_turn_is_answered_again(
    tmp_path: Path,
) -> None:
    options = EmulatorOptions(
        valid_api_keys=(KEY,),
        pace=1.0,
        espeak=False,
        reply_text="This is a long answer that takes several seconds to speak aloud, "
        "so the connection has to be handed over before it is finished.",
    )

    async def body() -> None:
        async with Rig(tmp_path, options) as rig:
            rig.session.open()
            await rig.events.wait_for(SessionReady)
            audio = pcm(90, 0.4)
            await rig.speak_turn(audio)
            await rig.events.wait_for(ModelAudioReceived)
            rig.emu.inject(FaultSpec("go_away", time_left_s=1.0))
            ready = await rig.events.wait_for(SessionReady, count=2)
            assert ready.resumed and not rig.events.of(SessionLost)
            old = rig.emu.record.connections[0]
            await wait_until(lambda: old.closed_by is not None)
            assert old.closed_by == "client"  # at timeLeft - margin, before the server's 1008
            assert not rig.emu.record.replies[0].completed
            (session,) = rig.emu.record.sessions
            await wait_until(lambda: len(rig.emu.record.replies) == 2)
            assert session.consumed_audio == audio  # the unanswered turn was replayed once
            assert rig.emu.record.replies[1].connection_index == 1

    run(body)


def test_close_while_connecting_cancels_the_attempt(tmp_path: Path) -> None:
    options = EmulatorOptions(valid_api_keys=(KEY,), pace=0.0, espeak=False, setup_delay_s=30)

    async def body() -> None:
        async with Rig(tmp_path, options) as rig:
            rig.session.open()
            await wait_until(lambda: rig.emu.record.connections)
            rig.session.close()
            await rig.events.wait_for(SessionClosed, timeout=10)
            assert not rig.events.of(SessionReady) and not rig.events.of(SessionLost)
            assert rig.session.state is SessionState.IDLE

    run(body)


def test_without_resumption_a_drop_resends_the_utterance_in_progress(tmp_path: Path) -> None:
    async def body() -> None:
        async with Rig(tmp_path, session_resumption=False) as rig:
            rig.session.open()
            await rig.events.wait_for(SessionReady)
            answered = pcm(100, 0.3)
            await rig.speak_turn(answered)
            await rig.events.wait_for(TurnCompleted)
            assert rig.session.status().replay.entries == 0
            pending = pcm(101, 0.3)
            rig.session.activity_start()
            for c in chunks(pending):
                rig.session.send_audio(c)
            await wait_until(lambda: consumed_len(rig) == len(answered) + len(pending))
            rig.emu.inject(FaultSpec("drop_tcp"))
            assert (await rig.events.wait_for(SessionReady, count=2)).resumed is False
            rig.session.activity_end()
            await rig.events.wait_for(TurnCompleted, count=2)
            assert [s.consumed_audio for s in rig.emu.record.sessions] == [
                answered + pending,
                pending,
            ]

    run(body)


def test_drop_between_turn_complete_and_its_handle_replays_that_turn(tmp_path: Path) -> None:
    """The answer arrived but the handle after it did not: the server will have forgotten
    the turn on resume, so the client must send it again (and the model answers again)."""
    options = EmulatorOptions(
        valid_api_keys=(KEY,),
        pace=0.0,
        espeak=False,
        message_delay_s=0.3,  # the handle trails turnComplete by 0.3 s: time to cut it off
        reply_audio_pcm=bytes(1920),  # one 40 ms chunk keeps the reply short
    )

    async def body() -> None:
        async with Rig(
            tmp_path, options, input_transcription=False, output_transcription=False
        ) as rig:
            rig.session.open()
            await rig.events.wait_for(SessionReady)
            audio = pcm(110, 0.4)
            await rig.speak_turn(audio)
            await rig.events.wait_for(TurnCompleted)
            rig.emu.inject(FaultSpec("drop_tcp"))
            assert (await rig.events.wait_for(SessionReady, count=2)).resumed
            await rig.events.wait_for(TurnCompleted, count=2)
            (session,) = rig.emu.record.sessions
            assert session.consumed_audio == audio and len(session.turns) == 1
            assert [r.connection_index for r in rig.emu.record.replies] == [0, 1]

    run(body)


class ThreadedEmulator:
    """The emulator on its own thread and loop, so the client's loop can stall without
    stalling the server (audio then piles up in flight, as on a slow network)."""

    def __init__(self, options: EmulatorOptions) -> None:
        self.emu = LiveEmulator(options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> LiveEmulator:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.emu.start(), self._loop).result(timeout=30)
        return self.emu

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.emu.stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


def test_reply_audio_already_in_flight_is_dropped_on_barge_in(tmp_path: Path) -> None:
    """A slow client barges in while more of the reply is already on its way: the session
    delivers that audio as it is, and the conversation machine drops all of it."""
    options = EmulatorOptions(
        valid_api_keys=(KEY,),
        pace=2.0,
        espeak=False,
        reply_text="A long reply that keeps streaming for a good few seconds after it starts.",
    )

    class BargeInOnFirstAudio(MiniDaemon):
        def __call__(self, event: object) -> None:
            super().__call__(event)
            first = isinstance(event, ModelAudioReceived) and len(self.played) == 1
            if first and not self.machine.policy.reply_audio_stale:  # not yet barged in
                time.sleep(0.3)  # a slow client: the server keeps streaming meanwhile
                self.feed(ButtonPressed())  # barge-in: InterruptSession

    async def body(emu: LiveEmulator) -> None:
        daemon = BargeInOnFirstAudio()
        session = LiveSession(
            gemini_cfg(emu), FAST_RECONNECT, lambda: KEY, tmp_path / "state", daemon
        )
        daemon.session = session
        session.start()
        try:
            daemon.press()
            await daemon.wait_for(SessionReady)
            await daemon.say(pcm(9, 0.3))
            await daemon.wait_for(ServerInterrupted)
            await daemon.wait_for(TurnCompleted)
            assert len(daemon.played) == 1  # everything after the barge-in dropped
            assert len(daemon.of(ModelAudioReceived)) > 1  # though it did arrive
            assert len(emu.record.replies[0].audio) > len(b"".join(daemon.played))
        finally:
            await session.stop()

    with ThreadedEmulator(options) as emu:
        run(lambda: body(emu))


# ---- server VAD, turn counting, busy resumes, slow handle store ----------------------------

SILENCE_1S = bytes(32_000)  # longer than the 700 ms server_vad_silence_ms default


async def speak_vad_turn(rig: Rig, speech: bytes) -> None:
    """Server-VAD mode: speech, then the mic keeps streaming silence until the VAD ends it."""
    rig.session.activity_start()  # no marker with the server's VAD
    for c in chunks(speech + SILENCE_1S):
        rig.session.send_audio(c)
        await asyncio.sleep(0)


def stream_end_received(rig: Rig) -> bool:
    return any(
        "audioStreamEnd" in m["realtimeInput"] for _, m in rig.client_messages("realtimeInput")
    )


def test_server_vad_go_away_during_a_reply_plays_it_out_and_answers_the_turn_once(
    tmp_path: Path,
) -> None:
    """The server's VAD ended the turn, so no marker of ours is owed: the reply streaming
    at the goAway must still play to its end on the old connection, and the handover must
    wait for the handle after it (else the resume replays the answered turn)."""
    options = EmulatorOptions(
        valid_api_keys=(KEY,),
        pace=2.0,
        espeak=False,
        reply_text="This is a fairly long answer that keeps on streaming for a few seconds.",
    )

    async def body() -> None:
        async with Rig(tmp_path, options, server_vad=True) as rig:
            rig.session.open()
            await rig.events.wait_for(SessionReady)
            await speak_vad_turn(rig, pcm(120, 0.6))
            await rig.events.wait_for(ModelAudioReceived)
            # the mic is still open (no audioStreamEnd): nothing of ours is owed, only the
            # open model turn says a reply is streaming
            # 60 s: the deadline (55 s) is far beyond every wait below, so a handover at
            # the deadline instead of after the reply fails the test instead of passing late
            rig.emu.inject(FaultSpec("go_away", time_left_s=60.0))
            ready = await rig.events.wait_for(SessionReady, count=2, timeout=30)
            assert ready.resumed and not rig.events.of(SessionLost)
            (first,) = rig.emu.record.replies
            assert first.connection_index == 0 and first.completed and not first.interrupted
            assert rig.events.model_audio() == bytes(first.audio)  # not one sample cut
            kinds = [type(e) for e in rig.events.events]
            assert kinds.index(TurnCompleted) < kinds.index(SessionReady, 1)
            old = rig.emu.record.connections[0]
            await wait_until(lambda: old.closed_by is not None)
            assert old.closed_by == "client" and old.close_code == 1000  # before the 1008
            # the next turn is the only one answered on the new connection
            await speak_vad_turn(rig, pcm(121, 0.6))
            await rig.events.wait_for(TurnCompleted, count=2)
            replies = rig.emu.record.replies
            assert [r.connection_index for r in replies] == [0, 1]
            assert all(r.completed for r in replies)
            (session,) = rig.emu.record.sessions
            assert [t.connection_index for t in session.turns] == [0, 1]
            assert rig.events.model_audio() == bytes(replies[0].audio) + bytes(replies[1].audio)

    run(body)


@pytest.mark.parametrize("cause", ["overflow", "server_vad_stream_end"])
def test_interrupt_with_no_reply_pending_does_not_mute_the_next_reply(
    tmp_path: Path, cause: str
) -> None:
    """A barge-in when nothing is playing or due must not swallow the next reply. Both
    causes used to leave a marker counted as owed forever: an overflow that dropped a
    turn's activityStart but kept its activityEnd, and an audioStreamEnd sent after the
    server's VAD had already ended (and answered) the turn."""
    server_vad = cause == "server_vad_stream_end"
    reconnect = FAST_RECONNECT
    if cause == "overflow":
        reconnect = ReconnectConfig(
            initial_delay_s=0.05, max_delay_s=0.2, jitter=0.0, replay_buffer_max_s=1.0
        )

    async def body() -> None:
        async with Rig(tmp_path, reconnect=reconnect, server_vad=server_vad) as rig:
            if cause == "overflow":
                first, kept = pcm(130, 0.6), pcm(131, 0.6)
                await rig.speak_turn(first)  # both spoken offline: 1.2 s > the 1 s log
                await rig.speak_turn(kept)
                rig.session.open()
                await rig.events.wait_for(TurnCompleted)
                (session,) = rig.emu.record.sessions
                assert session.consumed_audio == kept  # the oldest turn went whole
                assert rig.session.status().replay.dropped_unsent_audio_bytes == len(first)
            else:
                rig.session.open()
                await rig.events.wait_for(SessionReady)
                await speak_vad_turn(rig, pcm(132, 0.6))
                await rig.events.wait_for(TurnCompleted)
                rig.session.activity_end()  # after the answer: this audioStreamEnd gets none
                await wait_until(lambda: stream_end_received(rig))
            await wait_until(lambda: rig.session.status().replay.covered >= 1)
            rig.session.interrupt()  # the button, with nothing playing and nothing due
            if server_vad:
                await speak_vad_turn(rig, pcm(133, 0.6))
            else:
                for c in chunks(pcm(134, 0.5)):  # interrupt() opened the turn
                    rig.session.send_audio(c)
                rig.session.activity_end()
            await rig.events.wait_for(TurnCompleted, count=2)
            replies = rig.emu.record.replies
            assert len(replies) == 2 and replies[1].completed
            assert rig.events.model_audio() == bytes(replies[0].audio) + bytes(replies[1].audio)

    run(body)


def test_resume_refused_with_1011_three_times_starts_a_fresh_session(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After a Wi-Fi roam the server still holds the vanished connection and refuses the
    resume with 1011: give up on the handle after three refusals instead of forever."""
    caplog.set_level(logging.INFO, logger="edge_agent.live")
    fake = FakeTime()

    async def body() -> None:
        async with Rig(tmp_path, fake_time=fake) as rig:
            rig.session.open()
            await rig.events.wait_for(SessionReady)
            answered = pcm(140, 0.4)
            await rig.speak_turn(answered)
            await rig.events.wait_for(TurnCompleted)
            await wait_until(lambda: rig.session.status().replay.covered == 1)
            pending = pcm(141, 0.4)
            rig.session.activity_start()
            for c in chunks(pending):
                rig.session.send_audio(c)
            await wait_until(lambda: consumed_len(rig) == len(answered) + len(pending))
            rig.emu.inject(FaultSpec("vanish"))  # the server keeps the session attached
            rig.session.activity_end()
            ready = await rig.events.wait_for(SessionReady, count=2)
            assert ready.resumed is False
            await rig.events.wait_for(TurnCompleted, count=2)
            _, *refused, fresh = rig.emu.record.connections
            assert len(refused) == 3
            handle = refused[0].resumed_from_handle
            assert handle is not None
            assert all(c.resumed_from_handle == handle for c in refused)
            assert all((c.close_code, c.closed_by) == (1011, "server") for c in refused)
            assert fresh.resumed_from_handle is None and fresh.setup_complete_sent
            lost = rig.events.of(SessionLost)
            assert [("1011" in x.reason) for x in lost] == [False, True, True, True]
            assert not any(x.fatal for x in lost)
            # the fresh session got the unanswered utterance, not the answered one
            assert rig.emu.record.sessions[-1].consumed_audio == pending

    run(body)
    gave_up = [r for r in caplog.records if "refused to resume" in r.getMessage()]
    assert len(gave_up) == 1 and gave_up[0].levelno == logging.WARNING
    assert "fresh session" in gave_up[0].getMessage()


def test_slow_handle_store_does_not_stall_the_receive_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An fsync stuck on a slow SD card must not hold up the next server messages; the
    newest handle still reaches the disk, and a save superseded meanwhile is skipped."""
    gate = threading.Event()
    written: list[str] = []
    original_save = HandleStore.save

    def slow_save(self: HandleStore, handle: str, *args: object, **kwargs: object) -> None:
        gate.wait(timeout=60)  # released by the test, never by a timer
        original_save(self, handle, *args, **kwargs)
        written.append(handle)

    monkeypatch.setattr(HandleStore, "save", slow_save)

    async def body() -> None:
        async with Rig(tmp_path) as rig:
            rig.session.open()
            await rig.events.wait_for(SessionReady)  # its handle's save blocks the worker
            for n in (1, 2):
                await rig.speak_turn(pcm(150 + n, 0.3))
                await rig.events.wait_for(TurnCompleted, count=n)
            await wait_until(lambda: rig.session.status().replay.covered == 2)
            assert written == []  # everything above happened with the store stuck
            gate.set()
            await rig.session.stop()  # waits for the queued writes
            assert len(written) == 2  # the setup handle, then only the newest one
            rig.session = rig.new_session()  # a restart resumes from what was written
            rig.session.start()
            rig.session.open()
            assert (await rig.events.wait_for(SessionReady, count=2)).resumed
            resumed = rig.emu.record.connections[1]
            assert resumed.resumed_from_handle == written[-1]
            (session,) = rig.emu.record.sessions
            assert len(session.turns) == 2  # the handle after the second answer

    run(body)


# ---- NON_BLOCKING tool calls (gemini-3.8-live) -------------------------------------------


def tool_responses(rig: Rig) -> list[dict]:
    return [
        response
        for _, message in rig.client_messages("toolResponse")
        for response in message["toolResponse"]["functionResponses"]
    ]


def test_non_blocking_tool_runs_off_the_loop_and_its_answer_is_spoken_when_idle(
    tmp_path: Path,
) -> None:
    threads: list[str] = []

    def slow_clock(_args: object) -> dict:
        threads.append(threading.current_thread().name)
        time.sleep(0.3)  # blocking: it must not hold up the event loop
        return {"local_time": "12:00"}

    tools = ToolRegistry([Tool(GET_TIME_DECLARATION, slow_clock)])
    options = EmulatorOptions(valid_api_keys=(KEY,), pace=1.0, espeak=False, force_tool_call=True)

    async def body() -> None:
        async with Rig(tmp_path, options, tools=tools) as rig:
            rig.session.open()
            await rig.events.wait_for(SessionReady)
            await rig.speak_turn(pcm(60, 0.3))
            called = await rig.events.wait_for(ToolCalled)
            ticks = 0
            while not tool_responses(rig):  # the loop keeps running while the tool sleeps
                ticks += 1
                await asyncio.sleep(0.01)
            assert ticks >= 10 and threads and threads[0] != threading.current_thread().name
            (response,) = tool_responses(rig)
            assert response["id"] == called.call_id and response["scheduling"] == "WHEN_IDLE"
            await rig.events.wait_for(TurnCompleted, count=2)  # the reply, then the answer
            first, answer = rig.emu.record.replies
            assert first.turn_index == 0 and first.completed
            assert answer.answers_call == called.call_id and answer.completed
            assert "12:00" in answer.text
            setup = rig.emu.record.messages[0][1]["setup"]
            (declaration,) = setup["tools"][0]["functionDeclarations"]
            assert declaration["behavior"] == "NON_BLOCKING"

    run(body)


def test_non_blocking_tool_cancelled_by_the_server_sends_nothing(tmp_path: Path) -> None:
    cancelled = asyncio.Event()

    async def hangs(_args: object) -> dict:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {"local_time": "12:00"}

    tools = ToolRegistry([Tool(GET_TIME_DECLARATION, hangs)])
    options = EmulatorOptions(valid_api_keys=(KEY,), pace=0.0, espeak=False, force_tool_call=True)

    async def body() -> None:
        async with Rig(tmp_path, options, tools=tools) as rig:
            rig.session.open()
            await rig.events.wait_for(SessionReady)
            await rig.speak_turn(pcm(61, 0.3))
            called = await rig.events.wait_for(ToolCalled)
            await rig.events.wait_for(TurnCompleted)  # the reply did not wait for the tool
            assert rig.session.status().tool_calls_running == 1
            rig.emu.inject(FaultSpec("cancel_tool_calls"))
            event = await rig.events.wait_for(ToolCallCancelled)
            assert event.call_ids == (called.call_id,)
            async with asyncio.timeout(5):
                await cancelled.wait()
            await wait_until(lambda: rig.session.status().tool_calls_running == 0)
            await asyncio.sleep(0.3)
            assert tool_responses(rig) == []
            assert rig.emu.record.replies[0].tool_calls[0]["cancelled"] is True

    run(body)


def test_non_blocking_answer_after_a_barge_in_goes_silent_and_nothing_talks_later(
    tmp_path: Path,
) -> None:
    release = asyncio.Event()

    async def waits_for_release(_args: object) -> dict:
        await release.wait()
        return {"local_time": "12:00"}

    tools = ToolRegistry([Tool(GET_TIME_DECLARATION, waits_for_release)])
    options = EmulatorOptions(
        valid_api_keys=(KEY,),
        pace=1.0,
        espeak=False,
        force_tool_call=True,
        reply_text="Let me look at the clock for you, it takes a moment.",
    )
    daemon = MiniDaemon()

    async def body() -> None:
        async with Rig(tmp_path, options, tools=tools, events=daemon) as rig:
            daemon.press()
            await rig.events.wait_for(SessionReady)
            await daemon.say(pcm(62, 0.3))
            called = await rig.events.wait_for(ToolCalled)
            await wait_until(lambda: len(daemon.played) >= 2)
            daemon.press()  # barge-in during the holding reply
            await rig.events.wait_for(ServerInterrupted)
            question = pcm(63, 0.4)
            await daemon.say(question)
            await wait_until(lambda: len(rig.emu.record.replies) >= 2)
            await wait_until(lambda: rig.emu.record.replies[1].completed)
            second_call = rig.emu.record.replies[1].tool_calls[0]["id"]  # asked after it
            release.set()  # both tools finish only now
            await wait_until(lambda: len(tool_responses(rig)) == 2)
            scheduling = {r["id"]: r["scheduling"] for r in tool_responses(rig)}
            assert scheduling == {called.call_id: "SILENT", second_call: "WHEN_IDLE"}
            await wait_until(lambda: len(rig.emu.record.replies) == 3)
            await asyncio.sleep(1.0)
            answers = [r.answers_call for r in rig.emu.record.replies]
            assert answers == [None, None, second_call]  # the late answer never talks
            entry = rig.emu.record.replies[0].tool_calls[0]
            assert entry["scheduling"] == "SILENT" and entry["spoken"] is False

    run(body)


# ---- a retired model -------------------------------------------------------------------------


def test_model_retired_mid_life_next_turn_answered_by_the_fallback_with_all_speech(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.live")

    async def body() -> None:
        async with Rig(tmp_path, fallback_models=(BLOCKING_MODEL,)) as rig:
            rig.session.open()
            await rig.events.wait_for(SessionReady)
            before = pcm(70, 0.4)
            await rig.speak_turn(before)
            await rig.events.wait_for(TurnCompleted)
            rig.session.close()
            await rig.events.wait_for(SessionClosed)
            rig.emu.retire_model("gemini-3.8-live")  # while the device sits idle
            after = pcm(71, 0.6)
            rig.session.open()  # the next wake: speech goes out while connecting
            await rig.speak_turn(after)
            await rig.events.wait_for(TurnCompleted, count=2)
            conns = rig.emu.record.connections
            assert [c.model for c in conns] == [
                "gemini-3.8-live",
                "gemini-3.8-live",
                BLOCKING_MODEL,
            ]
            assert conns[1].close_code == 1008 and "is not found" in conns[1].close_reason
            first, second = rig.emu.record.sessions[0], rig.emu.record.sessions[-1]
            assert first.consumed_audio == before and second.consumed_audio == after
            assert not rig.events.of(SessionLost)  # the user saw no failure
            status = rig.session.status()
            assert (status.model, status.configured_model) == (BLOCKING_MODEL, "gemini-3.8-live")
            assert "gemini-3.8-live is gone" in status.model_note
            # kept for the next wake, without trying the retired model again
            rig.session.close()
            await rig.events.wait_for(SessionClosed, count=2)
            rig.session.open()
            await rig.events.wait_for(SessionReady, count=3)
            assert [c.model for c in rig.emu.record.connections][-1] == BLOCKING_MODEL
            assert len(rig.emu.record.connections) == 4

    run(body)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    (switch,) = [r for r in warnings if "is gone" in r.getMessage()]
    assert "gemini-3.8-live" in switch.getMessage() and BLOCKING_MODEL in switch.getMessage()


def test_retired_model_without_fallbacks_uses_the_models_list(tmp_path: Path) -> None:
    options = EmulatorOptions(
        valid_api_keys=(KEY,),
        pace=0.0,
        espeak=False,
        retired_models=("gemini-3.8-live", "gemini-3.8-live-extended-thinking"),
    )

    async def body() -> None:
        async with Rig(tmp_path, options) as rig:
            audio = pcm(72, 0.5)
            rig.session.open()
            await rig.speak_turn(audio)
            await rig.events.wait_for(TurnCompleted)
            assert [c.model for c in rig.emu.record.connections] == [
                "gemini-3.8-live",
                BLOCKING_MODEL,  # the newest Live family left, preview or not
            ]
            assert rig.emu.record.sessions[-1].consumed_audio == audio
            status = rig.session.status()
            assert status.model == BLOCKING_MODEL and "models list" in status.model_note
            # the replacement's setup is built from its own (3.1) profile
            assert all("behavior" not in d for d in _declarations(rig, 1))

    run(body)


def _declarations(rig: Rig, connection: int) -> list[dict]:
    setups = [m["setup"] for i, m in rig.emu.record.messages if i == connection and "setup" in m]
    return setups[0]["tools"][0]["functionDeclarations"]


def test_no_usable_model_is_fatal_with_a_clear_message_and_retried_at_the_fatal_rate(
    tmp_path: Path,
) -> None:
    from edge_agent_devkit.emulator.models import DEFAULT_MODELS

    only_3_8 = tuple(
        m
        for m in DEFAULT_MODELS
        if "bidiGenerateContent" not in m.methods or m.name == "gemini-3.8-live"
    )
    options = EmulatorOptions(
        valid_api_keys=(KEY,),
        pace=0.0,
        espeak=False,
        models=only_3_8,
        retired_models=("gemini-3.8-live",),
    )
    fake = FakeTime(limit_s=650.0)
    reconnect = ReconnectConfig(initial_delay_s=0.05, max_delay_s=0.2, jitter=0.0)

    async def body() -> None:
        async with Rig(tmp_path, options, fake_time=fake, reconnect=reconnect) as rig:
            rig.session.open()
            async with asyncio.timeout(20):
                await fake.parked.wait()
            losses = rig.events.of(SessionLost)
            assert len(losses) == 3  # at 0 s, 300 s and 600 s
            assert all(lost.fatal and lost.retry_in_s == 300.0 for lost in losses)
            assert "no usable Live model" in losses[0].reason
            assert "gemini-3.8-live" in losses[0].reason
            assert rig.session.state is SessionState.FATAL
            assert len(rig.emu.record.connections) == 3  # one refused setup per cycle
            assert "no usable Live model" in (rig.session.status().last_error or "")

    run(body)


# ---- issue 17: rough edges of recovery ------------------------------------------------------


async def _client_close(rig: Rig, index: int) -> tuple[int | None, str | None]:
    """The close code the emulator received on connection ``index``, and who closed it."""
    await wait_until(lambda: len(rig.emu.record.connections) > index)
    conn = rig.emu.record.connections[index]
    await wait_until(lambda: conn.closed_by is not None)
    return conn.close_code, conn.closed_by


@pytest.mark.shelf
def test_leaving_on_purpose_closes_with_1000(tmp_path: Path) -> None:
    """An idle close, a daemon stop (while connected and while connecting) and a setup
    timeout are the client leaving on purpose: the server gets 1000, not 1011."""
    never_setup = EmulatorOptions(
        valid_api_keys=(KEY,),
        pace=0.0,
        espeak=False,
        connection_faults={0: [FaultSpec("never_setup")]},
    )

    async def body() -> None:
        async with Rig(tmp_path / "idle") as rig:
            rig.session.open()
            await rig.events.wait_for(SessionReady)
            rig.session.close()
            assert await _client_close(rig, 0) == (1000, "client")
        async with Rig(tmp_path / "stop") as rig:
            rig.session.open()
            await rig.events.wait_for(SessionReady)
            await rig.session.stop()  # SIGTERM: the daemon stops its session
            assert await _client_close(rig, 0) == (1000, "client")
        async with Rig(tmp_path / "stop-connecting", never_setup, setup_timeout_s=30) as rig:
            rig.session.open()
            await wait_until(lambda: rig.emu.record.connections)
            await asyncio.sleep(0.2)  # the setup is out: waiting for setupComplete
            await rig.session.stop()
            assert await _client_close(rig, 0) == (1000, "client")
        async with Rig(tmp_path / "setup-timeout", never_setup, setup_timeout_s=1.0) as rig:
            rig.session.open()
            lost = await rig.events.wait_for(SessionLost)
            assert "within 1 s (TLS, WebSocket upgrade or setupComplete never came)" in lost.reason
            assert await _client_close(rig, 0) == (1000, "client")
            await rig.events.wait_for(SessionReady)  # and the retry connects

    run(body)

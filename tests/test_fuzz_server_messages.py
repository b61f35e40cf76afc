"""Property-based fuzzing of the Live receive path: nothing the server sends crashes the daemon.

Two levels.

Pure (thousands of examples, no sockets): wire messages, valid ones (setupComplete,
serverContent with audio / transcripts / interrupted / turnComplete / generationComplete,
toolCall, toolCallCancellation, goAway, sessionResumptionUpdate, usageMetadata) and
mutations of them (a wrong type at any key, null, huge and negative numbers, unknown keys,
deep nesting, non-base64 audio, odd-length PCM, enormous transcripts), plus raw bytes that
are not JSON, not UTF-8 or not an object. Each frame goes through google-genai's own parser
(``sdk_parse``: what ``AsyncSession._receive`` does with a frame it has read). Whatever it
refuses must raise an error the session's receiver skips (``UNREADABLE_FRAME_ERRORS``, or an
``APIError``); whatever it accepts goes through ``LiveProtocol.on_message`` and its events
through the runtime's bookkeeping and the conversation machine, which must not raise or log
a traceback. Each refused frame is counted once.

Wire (a few hundred examples): the emulator sends fuzzed frames raw, as text or binary
frames, over the real TLS WebSocket to a real LiveSession driven by the real SDK. The
session survives (a sentinel frame after them arrives on the same connection and the next
turn is answered with all its audio), or, for the frames that end a connection by the
protocol's rules (a frame over the client's size limit, an error message carrying a close
code, a goAway), it reconnects and the next turn is answered
with all its audio; the WARNING for a kind of bad frame is logged once, not per frame.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.genai import _live_converters as live_converters
from google.genai import errors, types
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge_agent.app.runtime import MuteFile, Runtime
from edge_agent.config import Config, ConversationConfig, GeminiConfig, ReconnectConfig
from edge_agent.core import events as ev
from edge_agent.core.policy import BargeInRules
from edge_agent.core.state import AgentState, ConversationMachine
from edge_agent.device.gpio import NullPanel
from edge_agent.live.failures import Caught, is_close_code
from edge_agent.live.protocol import MAX_BAD_KINDS_LOGGED, LiveProtocol, SessionState
from edge_agent.live.session import UNREADABLE_FRAME_ERRORS, LiveSession
from edge_agent_devkit.emulator import EmulatorOptions, FaultSpec, LiveEmulator
from edge_agent_devkit.rig.appliance import API_KEY as STAND_IN_KEY

pytestmark = pytest.mark.shelf

SKIPPED_ERRORS = (errors.APIError, *UNREADABLE_FRAME_ERRORS)
CLIENT_MAX_FRAME_BYTES = 2**20  # websockets' default max_size, which the SDK keeps
PURE = settings(
    max_examples=1500,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---- google-genai's parse of one frame -------------------------------------------------


def sdk_parse(raw: bytes) -> types.LiveServerMessage:
    """google-genai 3.x ``AsyncSession._receive`` after ``ws.recv()``, step by step (the
    method itself reads the websocket): json.loads, the mldev converter, an error message
    when nothing is left, pydantic. Raises what the SDK raises."""
    response = json.loads(raw) if raw else {}
    converted = live_converters._LiveServerMessage_from_mldev(response)
    if not converted and response:
        errors.APIError.raise_error(response.get("code"), response, None)
    return types.LiveServerMessage._from_response(
        response=converted, kwargs=types.LiveServerMessage().model_dump()
    )


def parse_outcome(raw: bytes) -> tuple[str, Any]:
    """("message", msg) | ("skip", exc) | ("close", code): what the receiver does with it."""
    try:
        return "message", sdk_parse(raw)
    except errors.APIError as exc:
        code = exc.code if isinstance(exc.code, int) else None
        return ("close", code) if is_close_code(code) else ("skip", exc)
    except UNREADABLE_FRAME_ERRORS as exc:
        return "skip", exc


# ---- strategies: wire messages ------------------------------------------------------------

KNOWN_KEYS = [
    "setupComplete", "serverContent", "modelTurn", "parts", "inlineData", "mimeType", "data",
    "text", "inputTranscription", "outputTranscription", "interrupted", "turnComplete",
    "generationComplete", "toolCall", "functionCalls", "id", "name", "args",
    "toolCallCancellation", "ids", "goAway", "timeLeft", "sessionResumptionUpdate",
    "newHandle", "resumable", "usageMetadata", "totalTokenCount", "server_content",
    "model_turn", "turn_complete", "someFutureMessage", "groundingMetadata", "voiceActivity",
]  # fmt: skip
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=12))
odd_strings = st.sampled_from(
    ["", "!!!not base64!!!", "QUJD", "QUJ", "=", "50s", "-1s", "1e400s", "NaN", "\x00", "\ud7ff"]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([-1, 0, 2**31, 2**63, -(2**63), 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    odd_strings,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=8,
)
pcm = st.one_of(st.binary(max_size=1200), st.integers(1, 9).map(lambda n: b"\x01" * n))
b64 = pcm.map(lambda data: base64.b64encode(data).decode())
transcripts = st.one_of(
    st.text(max_size=60),
    st.sampled_from([10_000, 300_000]).map(lambda n: "word " * (n // 5)),
)
mime = st.sampled_from(
    ["audio/pcm;rate=24000", "audio/pcm;rate=16000", "audio/pcm", "audio/pcm;rate=999999999999",
     "text/plain", "", "audio/"]
)  # fmt: skip
part = st.one_of(
    st.builds(lambda m, d: {"inlineData": {"mimeType": m, "data": d}}, mime, b64),
    st.builds(lambda t: {"text": t}, transcripts),
)
server_content = st.fixed_dictionaries(
    {},
    optional={
        "modelTurn": st.fixed_dictionaries({"parts": st.lists(part, max_size=3)}),
        "inputTranscription": st.fixed_dictionaries({"text": transcripts}),
        "outputTranscription": st.fixed_dictionaries({"text": transcripts}),
        "interrupted": st.booleans(),
        "turnComplete": st.booleans(),
        "generationComplete": st.booleans(),
    },
)
call_ids = st.one_of(st.sampled_from(["c1", "c2", ""]), st.text(max_size=8))
tool_call = st.fixed_dictionaries(
    {
        "functionCalls": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["get_time", "nope", ""]) | st.text(max_size=10)},
                optional={"id": call_ids, "args": st.dictionaries(keys, json_values, max_size=3)},
            ),
            max_size=3,
        )
    }
)
go_away = st.fixed_dictionaries(
    {}, optional={"timeLeft": st.sampled_from(["50s", "0s", "1.5s", "99999999999999999999s"])}
)
resumption = st.fixed_dictionaries(
    {}, optional={"newHandle": st.text(max_size=20), "resumable": st.booleans()}
)
usage = st.fixed_dictionaries(
    {}, optional={"totalTokenCount": st.integers(0, 2**31), "promptTokenCount": st.integers(0)}
)
TOP_LEVEL = {
    "setupComplete": st.just({}),
    "serverContent": server_content,
    "toolCall": tool_call,
    "toolCallCancellation": st.fixed_dictionaries({"ids": st.lists(call_ids, max_size=3)}),
    "goAway": go_away,
    "sessionResumptionUpdate": resumption,
    "usageMetadata": usage,
}
valid_messages = st.one_of(
    *(strategy.map(lambda body, key=key: {key: body}) for key, strategy in TOP_LEVEL.items()),
    st.fixed_dictionaries({}, optional=TOP_LEVEL),  # several at once, as the service does
)


def _slots(value: Any) -> Iterator[tuple[Any, Any]]:
    """Every (container, key-or-index) in a JSON value, outermost first."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield value, key
            yield from _slots(item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield value, index
            yield from _slots(item)


def _nest(value: Any, depth: int, as_list: bool) -> Any:
    for _ in range(depth):
        value = [value] if as_list else {"a": value}
    return value


@st.composite
def mutated_messages(draw: st.DrawFn) -> Any:
    """A valid message with one to three things wrong with it."""
    message = copy.deepcopy(draw(valid_messages))
    for _ in range(draw(st.integers(1, 3))):
        slots = list(_slots(message))
        if not slots:
            message[draw(keys)] = draw(json_values)
            continue
        container, key = draw(st.sampled_from(slots))
        op = draw(st.sampled_from(["replace", "replace", "delete", "unknown_key", "nest"]))
        if op == "replace":
            container[key] = draw(json_values)
        elif op == "delete":
            del container[key]
        elif op == "unknown_key" and isinstance(container[key], dict):
            container[key][draw(keys)] = draw(json_values)
        elif op == "nest":
            depth = draw(st.integers(1, 200))
            container[key] = _nest(container[key], depth, draw(st.booleans()))
    return message


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


@st.composite
def raw_garbage(draw: st.DrawFn) -> bytes:
    """Frames that are not a JSON object in UTF-8 (or barely are)."""
    message = _dumps(draw(valid_messages))
    kind = draw(
        st.sampled_from(
            ["binary", "truncated", "trailing", "bom", "utf16", "latin1", "deep", "array",
             "scalar", "empty", "whitespace"]
        )
    )  # fmt: skip
    if kind == "binary":
        return draw(st.binary(max_size=200))
    if kind == "truncated":
        return message[: draw(st.integers(0, max(0, len(message) - 1)))]
    if kind == "trailing":
        return message + draw(st.binary(min_size=1, max_size=20))
    if kind == "bom":
        return b"\xef\xbb\xbf" + message
    if kind == "utf16":
        return message.decode().encode(draw(st.sampled_from(["utf-16", "utf-16-be", "utf-32"])))
    if kind == "latin1":
        return b'{"serverContent": {"inputTranscription": {"text": "caf\xe9"}}}'
    if kind == "deep":
        depth = draw(st.sampled_from([500, 5_000, 100_000]))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        return opener * depth + b"1" + closer * depth
    if kind == "array":
        return _dumps([draw(valid_messages)])
    if kind == "scalar":
        return _dumps(draw(scalars))
    if kind == "empty":
        return b""
    return b" \n\t "


any_frame = st.one_of(
    valid_messages.map(_dumps),
    mutated_messages().map(_dumps),
    json_values.map(_dumps),
    raw_garbage(),
)


# ---- pure level -------------------------------------------------------------------------


@PURE
@given(any_frame)
@example(b"[1, 2]")  # JSON but not an object: AttributeError in the SDK (was a crash)
@example(b'"serverContent"')
@example(b"[" * 100_000)  # RecursionError in json.loads (was a crash)
@example(b"\xff\xfe\x00not json")
@example(b'{"code": "1011"}')
def test_every_frame_the_sdk_refuses_raises_what_the_receiver_skips(raw: bytes) -> None:
    """The receive loop skips a frame on exactly these errors; anything else used to end
    the connection task with a traceback and a reconnect."""
    with contextlib.suppress(SKIPPED_ERRORS):
        sdk_parse(raw)


class FakeSession:
    """The runtime's Live session, recording what the machine asks of it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.calls.append(name)


class TracebackCatcher(logging.Handler):
    """Every record with a traceback, from anywhere."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.CRITICAL:
            self.records.append(record)


@contextlib.contextmanager
def tracebacks_caught() -> Iterator[TracebackCatcher]:
    catcher = TracebackCatcher()
    root = logging.getLogger()
    root.addHandler(catcher)
    try:
        yield catcher
    finally:
        root.removeHandler(catcher)


def _new_protocol(server_vad: bool) -> LiveProtocol:
    proto = LiveProtocol(
        GeminiConfig(server_vad=server_vad), ReconnectConfig(), random.Random(7).random
    )
    proto.started()
    proto.open()
    proto.session_started()
    proto.attempt_started(resuming=False)
    return proto


def _receive(proto: LiveProtocol, raw: bytes, clock: list[float]) -> tuple[list[Any], str]:
    """What ``LiveSession._receive_loop`` + ``_on_message`` do with one frame, minus I/O:
    the events to emit and what happened ("message", "skip" or "close")."""
    clock[0] += 0.01
    kind, value = parse_outcome(raw)
    if kind == "message":
        return list(proto.on_message(value, clock[0], 1_000_000.0 + clock[0]).events), kind
    if kind == "close":
        failure = proto.receive_error(Caught.API_ERROR, value, "error message from the server")
    else:
        caught = Caught.API_ERROR if isinstance(value, errors.APIError) else Caught.UNREADABLE
        code = getattr(value, "code", None)
        code = code if isinstance(code, int) else None  # as LiveSession._api_error_code
        failure = proto.receive_error(caught, code, f"{value.__class__.__name__}: {value}")
    if failure is None:
        return [], kind
    # The connection ends: the session reconnects and the next setup completes.
    proto.connection_closed()
    events = list(proto.failed(failure, clock[0]).events)
    proto.attempt_started(resuming=False)
    events.append(proto.setup_completed(clock[0]))
    return events, "close"


@PURE
@given(st.lists(any_frame, min_size=1, max_size=8), st.booleans())
def test_any_frame_sequence_keeps_protocol_runtime_and_machine_sane(
    frames: list[bytes], server_vad: bool
) -> None:
    """Frames -> protocol core -> runtime bookkeeping and conversation machine, as the daemon
    wires them: nothing raises, nothing logs a traceback, each refused frame counts once."""

    async def scenario() -> None:
        proto = _new_protocol(server_vad)
        runtime = Runtime(
            Config(),
            mute_file=MuteFile(Path("/nonexistent-edge-agent-fuzz")),
            stop=asyncio.Event(),
            spawn=lambda coro, _name: coro.close(),
            status_changed=lambda: None,
        )
        session = FakeSession()
        runtime.session = session  # type: ignore[assignment]
        runtime.panel = NullPanel()
        runtime.machine = ConversationMachine(ConversationConfig(), barge_in=BargeInRules())
        clock = [0.0]
        try:
            runtime.dispatch(ev.ListenRequested())
            runtime.on_live_event(proto.setup_completed(clock[0]))
            skipped = closes = 0
            for raw in frames:
                events, kind = _receive(proto, raw, clock)
                skipped += kind == "skip"
                closes += kind == "close"
                for event in events:
                    runtime.on_live_event(event)
            assert proto.counters.bad_frames == skipped, "each refused frame counts once"
            assert proto.state in (SessionState.READY, SessionState.HANDING_OVER)
            assert runtime.machine.state in AgentState
            runtime.machine.policy  # noqa: B018 - the policy must be computable in any state
        finally:
            runtime.cancel_timers()
            runtime.close()

    with tracebacks_caught() as caught:
        asyncio.run(scenario())
    assert not caught.records, [r.getMessage() for r in caught.records]


# Every event the machine can be given, with odd values where values go.
machine_events = st.one_of(
    st.builds(ev.WakeWordDetected, st.text(max_size=5), st.floats(0, 1), st.integers(0, 10**9)),
    st.builds(ev.SpeechStarted, st.integers(0, 10**9)),
    st.builds(ev.SpeechEnded, st.integers(0, 10**9), st.sampled_from(ev.SpeechEndReason)),
    st.builds(ev.BargeInDetected, st.sampled_from(ev.BargeInReason), st.integers(0, 10**9)),
    st.sampled_from(
        [
            ev.ButtonPressed(),
            ev.ButtonHeld(),
            ev.ButtonReleased(),
            ev.ServerInterrupted(),
            ev.GenerationCompleted(),
            ev.TurnCompleted(),
            ev.SessionClosed(),
            ev.PlaybackDrained(),
            ev.AudioDeviceRestored(),
            ev.ListenRequested(),
            ev.StopRequested(),
            ev.EndConversationRequested(),
            ev.ModelAudioReceived(b"\x00\x01" * 100),
        ]
    ),
    st.builds(ev.SessionReady, st.booleans()),
    st.builds(ev.InputTranscript, st.text(max_size=10)),
    st.builds(ev.OutputTranscript, st.text(max_size=10)),
    st.builds(ev.ToolCalled, st.text(max_size=5), st.just({}), st.none() | st.text(max_size=3)),
    st.builds(ev.ToolCallCancelled, st.lists(st.text(max_size=3), max_size=2).map(tuple)),
    st.builds(ev.GoAwayReceived, st.floats(0, 1e9)),
    st.builds(ev.SessionLost, st.text(max_size=10), st.booleans(), st.floats(0, 1e4)),
    st.builds(ev.TimerFired, st.sampled_from(["listen", "follow_up", "response", "idle", "x"])),
    st.builds(ev.AudioDeviceLost, st.text(max_size=5)),
    st.builds(ev.TimerRang, st.text(max_size=5)),
    st.builds(ev.TimerRingStopped, st.text(max_size=5)),
    st.builds(
        ev.TextTurnRequested, st.text(min_size=1, max_size=10), st.sampled_from(ev.TextTurnKind)
    ),
    st.builds(ev.MuteRequested, st.booleans()),
)


@PURE
@given(st.lists(st.tuples(machine_events, st.floats(0, 30)), max_size=40), st.booleans())
def test_no_event_sequence_crashes_the_conversation_machine(
    steps: list[tuple[Any, float]], muted: bool
) -> None:
    machine = ConversationMachine(
        ConversationConfig(), barge_in=BargeInRules(), muted_at_start=muted
    )
    now = 0.0
    for event, dt in steps:
        now += dt
        actions = machine.handle(event, now)
        assert isinstance(actions, list)
        assert machine.state in AgentState
        machine.policy  # noqa: B018


# ---- wire level: raw frames over the real TLS WebSocket ------------------------------------

# The suite's random stand-in key: tests/conftest.py sweeps every log and file for it.
KEY = STAND_IN_KEY
CHUNK = 640  # 20 ms of 16 kHz s16le
WIRE_EXAMPLES = 300


@dataclass(frozen=True)
class Frame:
    data: bytes
    text: bool  # sent as a text frame (the service sends binary ones)


def _may_end_connection(frame: Frame) -> bool:
    """Frames after which the protocol ends the connection (and the session reconnects)."""
    if len(frame.data) > CLIENT_MAX_FRAME_BYTES:
        return True  # 1009 message too big
    kind, value = parse_outcome(frame.data)
    if kind == "close":
        return True
    return kind == "message" and value.go_away is not None  # handover


def _no_fatal_code(raw: bytes) -> bool:
    """An error message carrying 1007/1008 means "key refused" to the session (fatal,
    retried after 5 minutes): true to the protocol, but not a fuzz case a turn can follow."""
    kind, value = parse_outcome(raw)
    return not (kind == "close" and value in (1007, 1008))


wire_frames = st.builds(
    Frame,
    st.one_of(
        valid_messages.map(_dumps),
        mutated_messages().map(_dumps),
        raw_garbage(),
        st.sampled_from(
            [
                b'{"code": 1011, "message": "x"}',
                b'{"code": 400, "message": "bad"}',
                b"{" * 40 + b"x",
                b"\xc3\x28",
                b'{"serverContent": {"turnComplete": true}}',
            ]
        ),
    ).filter(_no_fatal_code),
    st.booleans(),
)
oversized = Frame(_dumps({"usageMetadata": {"x": "a" * (CLIENT_MAX_FRAME_BYTES + 10)}}), False)


def _pcm(seed: int, seconds: float) -> bytes:
    return random.Random(seed).randbytes(int(seconds * 32_000) // 2 * 2)


class Recorder:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.changed = asyncio.Event()

    def __call__(self, event: Any) -> None:
        self.events.append(event)
        self.changed.set()

    async def wait(self, predicate: Any, timeout_s: float = 20.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


class RecordKeeper(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class WireRig:
    """One emulator and one LiveSession for all the wire examples, on a loop of its own."""

    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.tmp = tmp
        self.events = Recorder()
        self.sentinels = 0
        self.turns = 0
        self.reconnects_expected = 0
        self.log = RecordKeeper()
        self.tracebacks = TracebackCatcher()

    def run(self, coro: Any, timeout_s: float = 60.0) -> Any:
        async def bounded() -> Any:
            async with asyncio.timeout(timeout_s):
                return await coro

        return self.loop.run_until_complete(bounded())

    async def start(self) -> None:
        protocol_log = logging.getLogger("edge_agent.live.protocol")
        protocol_log.addHandler(self.log)
        protocol_log.setLevel(logging.DEBUG)
        logging.getLogger().addHandler(self.tracebacks)
        options = EmulatorOptions(valid_api_keys=(KEY,), pace=0.0, espeak=False)
        self.emu = LiveEmulator(options)
        await self.emu.start()
        cfg = GeminiConfig(
            base_url=self.emu.base_url, ca_file=str(self.emu.ca_pem_path), setup_timeout_s=5.0
        )
        fast = ReconnectConfig(initial_delay_s=0.05, max_delay_s=0.2, jitter=0.0)
        self.session = LiveSession(cfg, fast, lambda: KEY, self.tmp / "state", self.events)
        self.session.start()
        self.session.open()
        await self.events.wait(lambda: self.session.ready)

    async def stop(self) -> None:
        await self.session.stop()
        await self.emu.stop()
        protocol_log = logging.getLogger("edge_agent.live.protocol")
        protocol_log.removeHandler(self.log)
        protocol_log.setLevel(logging.NOTSET)
        logging.getLogger().removeHandler(self.tracebacks)

    def last_transcript(self) -> str | None:
        for event in reversed(self.events.events):
            if isinstance(event, ev.InputTranscript):
                return event.text
        return None

    async def send(self, frames: list[Frame]) -> None:
        """Inject the frames and a sentinel; wait until the sentinel arrives or the session
        is ready on a new connection. Checks the bad-frame count and unexpected reconnects."""
        before_bad = self.session.status().bad_frames
        connections = len(self.emu.record.connections)
        # A goAway of an earlier example may still wait for the conversation to settle.
        handing_over = self.session.state is SessionState.HANDING_OVER
        may_end = handing_over or any(_may_end_connection(f) for f in frames)
        expected_bad = sum(parse_outcome(f.data)[0] == "skip" for f in frames)
        self.sentinels += 1
        sentinel = f"sentinel {self.sentinels}"
        for frame in frames:
            self.emu.inject(FaultSpec("raw_frame", data=frame.data, text=frame.text))
        body = {"serverContent": {"inputTranscription": {"text": sentinel}}}
        self.emu.inject(FaultSpec("raw_frame", data=_dumps(body)))

        def settled() -> bool:
            if self.last_transcript() == sentinel:
                return True
            reconnected = len(self.emu.record.connections) > connections
            return reconnected and self.session.ready

        await self.events.wait(settled)
        if self.last_transcript() == sentinel and len(self.emu.record.connections) == connections:
            assert self.session.status().bad_frames - before_bad == expected_bad
        else:
            assert may_end, f"reconnected after {frames!r}"
            self.reconnects_expected += 1
            await self.events.wait(lambda: self.session.ready)

    async def turn(self) -> None:
        """A normal turn is answered, and the emulator got every byte of it."""
        self.turns += 1
        audio = _pcm(self.turns, 0.2)
        completed = sum(isinstance(e, ev.TurnCompleted) for e in self.events.events)
        replies = len(self.emu.record.replies)
        self.session.activity_start()
        for i in range(0, len(audio), CHUNK):
            self.session.send_audio(audio[i : i + CHUNK])
        self.session.activity_end()
        await self.events.wait(
            lambda: (
                len(self.emu.record.replies) > replies
                and sum(isinstance(e, ev.TurnCompleted) for e in self.events.events) > completed
                and self.emu.record.replies[-1].completed
            )
        )
        session = self.emu.record.sessions[-1]
        assert session.consumed_audio.endswith(audio), "the turn's audio arrived whole"
        assert session.turns[-1].audio_bytes == len(audio)


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WireRig]:
    rig = WireRig(tmp_path_factory.mktemp("wire"))
    rig.run(rig.start())
    try:
        yield rig
    finally:
        rig.run(rig.stop())
        rig.loop.close()


@settings(
    max_examples=WIRE_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(frames=st.lists(wire_frames, min_size=1, max_size=4))
@example(frames=[Frame(b"[1, 2]", False), Frame(b"[" * 100_000, True)])
@example(frames=[oversized])
@example(frames=[Frame(b"\xff\xfe not utf-8", True)])  # the SDK reads text frames undecoded
def test_fuzzed_frames_over_the_wire_never_cost_the_session(
    wire: WireRig, frames: list[Frame]
) -> None:
    wire.run(wire.send(frames))
    wire.run(wire.turn())  # answered, with every byte of its audio
    assert not any(isinstance(e, ev.SessionLost) and e.fatal for e in wire.events.events), (
        "a fuzzed frame made the session give up"
    )
    assert not wire.tracebacks.records, [r.getMessage() for r in wire.tracebacks.records]


def test_after_the_wire_fuzz_a_turn_is_answered_and_each_kind_was_logged_once(
    wire: WireRig,
) -> None:
    """Runs after the property, on the same rig: one more turn is answered; a burst of one
    bad frame, with good frames between, is counted per frame; over the whole module each
    kind of bad frame was logged at WARNING once (the rest at DEBUG)."""
    wire.run(wire.turn())
    junk = [Frame(b"\x00\x01 binary junk " + bytes([i]), False) for i in range(20)]
    mixed = [f for frame in junk for f in (frame, Frame(b'{"usageMetadata": {}}', False))]
    wire.run(wire.send(mixed))
    wire.run(wire.turn())
    skipped = [r for r in wire.log.records if r.getMessage().startswith("skipped an unreadable")]
    warnings = [r.getMessage() for r in skipped if r.levelno == logging.WARNING]
    kinds = [w.split("(", 1)[1].split(":", 1)[0] for w in warnings]
    assert len(kinds) == len(set(kinds)), warnings
    assert len(skipped) == wire.session.status().bad_frames >= 20
    assert len(warnings) <= MAX_BAD_KINDS_LOGGED

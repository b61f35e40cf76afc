"""Helpers for driving the Live API emulator with the real google-genai SDK or raw websockets.

Imported by tests/test_emulator.py (and usable by other tests): plain functions and async
context managers, no pytest fixtures, so every test controls its own event loop with
`run(...)` and every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
from google import genai
from google.genai import types
from websockets.asyncio.client import ClientConnection, connect

from edge_agent_devkit.emulator import EmulatorOptions, LiveEmulator

KEY = "test-key"
MODEL = "gemini-3.8-live"
TEST_TIMEOUT_S = 30.0
PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"


def run(coro_fn: Callable[[], Awaitable[None]], timeout: float = TEST_TIMEOUT_S) -> None:
    """Run one async test body on a fresh loop, bounded by `timeout`."""

    async def main() -> None:
        async with asyncio.timeout(timeout):
            await coro_fn()

    asyncio.run(main())


@contextlib.asynccontextmanager
async def emulator(**overrides: Any) -> AsyncIterator[LiveEmulator]:
    """A started emulator with fast defaults (unpaced, tone replies), stopped on exit."""
    values: dict[str, Any] = {"pace": 0.0, "espeak": False, "reply_text": "Sure, done."}
    values.update(overrides)
    emu = LiveEmulator(EmulatorOptions(**values))
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()


def sdk_client(
    emu: LiveEmulator, key: str = KEY, headers: dict[str, str] | None = None, **ws_args: Any
) -> genai.Client:
    """A real genai.Client pointed at the emulator (TLS trust via async_client_args)."""
    return genai.Client(
        api_key=key,
        http_options=types.HttpOptions(
            base_url=emu.base_url,
            headers=headers,
            async_client_args={"ssl": emu.client_ssl_context(), **ws_args},
        ),
    )


def live_config(
    *, vad: bool = False, resumption: types.SessionResumptionConfig | None = None, **kw: Any
) -> types.LiveConnectConfig:
    """AUDIO replies, both transcriptions, resumption on; server VAD off unless `vad`."""
    values: dict[str, Any] = {
        "response_modalities": [types.Modality.AUDIO],
        "input_audio_transcription": types.AudioTranscriptionConfig(),
        "output_audio_transcription": types.AudioTranscriptionConfig(),
        "session_resumption": resumption or types.SessionResumptionConfig(),
    }
    if not vad:
        values["realtime_input_config"] = types.RealtimeInputConfig(
            automatic_activity_detection=types.AutomaticActivityDetection(disabled=True)
        )
    values.update(kw)
    return types.LiveConnectConfig(**values)


async def collect_turn(session: Any, timeout: float = 15.0) -> list[types.LiveServerMessage]:
    """Every message of one `receive()` pass (it ends at turnComplete)."""
    out: list[types.LiveServerMessage] = []

    async def loop() -> None:
        async for message in session.receive():
            out.append(message)

    await asyncio.wait_for(loop(), timeout)
    return out


async def next_message(session: Any, timeout: float = 10.0) -> types.LiveServerMessage:
    """The next single message (a fresh `receive()`; the handle arrives this way)."""
    iterator = session.receive()
    try:
        return await asyncio.wait_for(iterator.__anext__(), timeout)
    finally:
        await iterator.aclose()


def label(message: types.LiveServerMessage) -> str:
    """A short name for a server message, for order assertions."""
    if message.session_resumption_update is not None:
        return "handle" if message.session_resumption_update.new_handle else "not_resumable"
    if message.tool_call is not None:
        return "tool_call"
    if message.tool_call_cancellation is not None:
        return "tool_cancel"
    if message.go_away is not None:
        return "go_away"
    if message.setup_complete is not None:
        return "setup_complete"
    content = message.server_content
    if content is None:
        return "other"
    if content.input_transcription is not None:
        return "input_tx"
    if content.output_transcription is not None:
        return "output_tx"
    if content.model_turn is not None:
        return "audio"
    if content.generation_complete:
        return "gen_complete"
    if content.interrupted:
        return "interrupted"
    if content.turn_complete:
        return "turn_complete"
    return "other"


def squash(
    labels: list[str], group: frozenset[str] = frozenset({"audio", "output_tx"})
) -> list[str]:
    """Collapse runs of reply content (audio / output transcription) into one "reply"."""
    out: list[str] = []
    for name in labels:
        name = "reply" if name in group else name
        if not (out and out[-1] == "reply" and name == "reply"):
            out.append(name)
    return out


def audio_of(messages: list[types.LiveServerMessage]) -> bytes:
    """Concatenated model audio, checking every part's mime type."""
    data = bytearray()
    for message in messages:
        content = message.server_content
        if content is None or content.model_turn is None:
            continue
        for part in content.model_turn.parts or []:
            if part.inline_data is None:
                continue  # a text part (TEXT modality)
            assert part.inline_data.mime_type == "audio/pcm;rate=24000"
            data += part.inline_data.data or b""
    return bytes(data)


def output_text(messages: list[types.LiveServerMessage]) -> str:
    return "".join(
        m.server_content.output_transcription.text or ""
        for m in messages
        if m.server_content is not None and m.server_content.output_transcription is not None
    )


def noise_pcm(seconds: float, seed: int, level: int = 3000, rate: int = 16000) -> bytes:
    """Deterministic loud 16 kHz s16le noise (counts as speech for the energy VAD)."""
    rng = np.random.default_rng(seed)
    samples = rng.integers(-level, level, size=round(seconds * rate), dtype=np.int16)
    return samples.astype("<i2").tobytes()


def silence_pcm(seconds: float, rate: int = 16000) -> bytes:
    return bytes(2 * round(seconds * rate))


def chunks(data: bytes, size: int = 3200) -> list[bytes]:
    """100 ms pieces of 16 kHz s16le audio."""
    return [data[i : i + size] for i in range(0, len(data), size)]


async def send_audio(session: Any, audio: bytes) -> None:
    for piece in chunks(audio):
        await session.send_realtime_input(
            audio=types.Blob(data=piece, mime_type="audio/pcm;rate=16000")
        )


@contextlib.asynccontextmanager
async def raw_connect(
    emu: LiveEmulator,
    *,
    key: str | None = KEY,
    query_key: str | None = None,
    path: str = PATH,
    **kwargs: Any,
) -> AsyncIterator[ClientConnection]:
    """A plain websockets client (for what the SDK cannot express)."""
    uri = emu.base_url.replace("https://", "wss://") + path
    if query_key is not None:
        uri += f"?key={query_key}"
    headers = {"x-goog-api-key": key} if key is not None else {}
    async with connect(
        uri, ssl=emu.client_ssl_context(), additional_headers=headers, **kwargs
    ) as ws:
        yield ws


def raw_setup(vad: bool = False, **extra: Any) -> dict[str, Any]:
    setup: dict[str, Any] = {
        "model": f"models/{MODEL}",
        "generationConfig": {"responseModalities": ["AUDIO"]},
        "inputAudioTranscription": {},
        "outputAudioTranscription": {},
    }
    if not vad:
        setup["realtimeInputConfig"] = {"automaticActivityDetection": {"disabled": True}}
    setup.update(extra)
    return {"setup": setup}


async def send_json(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


async def recv_json(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    frame = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(frame, bytes), "server frames must be binary"
    return json.loads(frame)


async def recv_until(
    ws: ClientConnection, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Messages up to and including the first that satisfies `predicate`."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            message = await recv_json(ws, timeout)
            out.append(message)
            if predicate(message):
                return out


def is_turn_complete(message: dict[str, Any]) -> bool:
    return bool(message.get("serverContent", {}).get("turnComplete"))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")

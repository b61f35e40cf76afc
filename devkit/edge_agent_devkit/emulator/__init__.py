"""Local Gemini Live API emulator (TLS WebSocket) for tests, the offline demo and benchmarks.

    from edge_agent_devkit.emulator import LiveEmulator, EmulatorOptions, FaultSpec

    emu = LiveEmulator(EmulatorOptions(pace=0.0, espeak=False))
    await emu.start()
    client = genai.Client(api_key="test-key", http_options=types.HttpOptions(
        base_url=emu.base_url, async_client_args={"ssl": emu.client_ssl_context()}))
    ...
    await emu.stop()

Behaviour notes (choices where the public documentation leaves room; they follow the
real service as public traces show it):
- inputTranscription / outputTranscription are sent only when the setup enables
  inputAudioTranscription / outputAudioTranscription; sessionResumptionUpdate messages
  (the post-setup handle, `{}` while generating, the post-turn handle) only when the setup
  has a sessionResumption field.
- responseModalities ["TEXT"] gets text parts instead of audio.
- With server VAD on, every audio byte is consumed; a turn's `audio_bytes` counts what was
  consumed since the previous turn ended. With it off, only audio between activityStart
  and activityEnd is consumed.
- `ConnectionRecord.resumed_from_handle` is the handle the client presented (set even when
  it was refused with 1007/1011); `resumed` says whether it was accepted.
- Connection indexes count every WebSocket upgrade request, including refused ones
  (wrong path, `http_status` fault).
"""

from .emulator import EmulatorOptions, LiveEmulator
from .faults import FaultSpec
from .record import ConnectionRecord, EmulatorRecord, ReplyRecord, SessionRecord, TurnRecord

__all__ = [
    "ConnectionRecord",
    "EmulatorOptions",
    "EmulatorRecord",
    "FaultSpec",
    "LiveEmulator",
    "ReplyRecord",
    "SessionRecord",
    "TurnRecord",
]

"""Wire format of the emulated Live API: client-message parsing and server-message building.

The real service parses client JSON with the proto3 JSON parser, which accepts both the
lowerCamel JSON names and the original snake_case field names (the google-genai SDK 3.x
sends a mix of both) and rejects unknown names with close code 1007. Everything here is
pure (no I/O) so it can be tested on its own.

Parsing normalises every field name to lowerCamel, except inside values that carry user
data (function-call args, function responses, JSON schemas, labels), which stay verbatim.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

# Close codes and reasons the real service uses (from public traces and reports).
CLOSE_INVALID_ARGUMENT = 1007
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_GOING_AWAY = 1001

REASON_BAD_KEY = "API key not valid. Please pass a valid API key."
REASON_MISSING_KEY = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
REASON_ABORTED = "The operation was aborted."
REASON_INTERNAL = "Internal error encountered."
REASON_DEADLINE = "Deadline expired before operation could complete."
REASON_STALE_HANDLE = "Session resumption handle is invalid or has expired."
REASON_TRANSPARENT = (
    "Invalid argument: transparent session resumption is not supported by the Gemini API."
)
REASON_MEDIA_CHUNKS = (
    "realtime_input.media_chunks is deprecated and no longer supported. "
    "Use audio, video or text instead."
)
REASON_SECOND_SETUP = "Invalid argument: setup must be the first and only setup message."
REASON_SETUP_FIRST = "Invalid argument: the first message must be a setup message."
REASON_ACTIVITY_WITH_VAD = (
    "Invalid argument: explicit activity control (activity_start/activity_end) is not "
    "supported when automatic activity detection is enabled."
)

# WebSocket close reasons are limited to 123 UTF-8 bytes (RFC 6455 section 5.5).
_MAX_REASON_BYTES = 123

AUDIO_IN_RATE_HZ = 16000
AUDIO_OUT_RATE_HZ = 24000
AUDIO_OUT_MIME = f"audio/pcm;rate={AUDIO_OUT_RATE_HZ}"

_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")
_SNAKE_PART = re.compile(r"_([a-z0-9])")
_CAMEL_PART = re.compile(r"([A-Z])")

# Values under these (lowerCamel) keys are user data: keep their keys verbatim.
_OPAQUE_KEYS = frozenset(
    {
        "args",
        "response",
        "parameters",
        "parametersJsonSchema",
        "responseJsonSchema",
        "responseSchema",
        "jsonSchema",
        "labels",
    }
)

# Allowed field names (lowerCamel) per message type. None = not validated below this point
# (deep, loosely specified structures such as Content parts and tool declarations).
Schema = Mapping[str, "Schema | None"]

_BLOB: Schema = {"mimeType": None, "data": None, "displayName": None}
_AUTO_ACTIVITY: Schema = {
    "disabled": None,
    "startOfSpeechSensitivity": None,
    "endOfSpeechSensitivity": None,
    "prefixPaddingMs": None,
    "silenceDurationMs": None,
}
_GENERATION_CONFIG: Schema = {
    "candidateCount": None,
    "maxOutputTokens": None,
    "temperature": None,
    "topP": None,
    "topK": None,
    "presencePenalty": None,
    "frequencyPenalty": None,
    "stopSequences": None,
    "responseMimeType": None,
    "responseSchema": None,
    "responseJsonSchema": None,
    "responseLogprobs": None,
    "logprobs": None,
    "responseModalities": None,
    "speechConfig": None,
    "mediaResolution": None,
    "seed": None,
    "thinkingConfig": None,
    "enableAffectiveDialog": None,
    "enableEnhancedCivicAnswers": None,
    "translationConfig": None,
    "imageConfig": None,
}
_SETUP: Schema = {
    "model": None,
    "generationConfig": _GENERATION_CONFIG,
    "systemInstruction": None,
    "tools": None,
    "realtimeInputConfig": {
        "automaticActivityDetection": _AUTO_ACTIVITY,
        "activityHandling": None,
        "turnCoverage": None,
    },
    "sessionResumption": {"handle": None, "transparent": None},
    "contextWindowCompression": {"triggerTokens": None, "slidingWindow": {"targetTokens": None}},
    "inputAudioTranscription": None,
    "outputAudioTranscription": None,
    "proactivity": None,
    "historyConfig": None,
    "avatarConfig": None,
    "safetySettings": None,
    "labels": None,
}
_FUNCTION_RESPONSE: Schema = {
    "id": None,
    "name": None,
    "response": None,
    "willContinue": None,
    "scheduling": None,
    "parts": None,
}
CLIENT_MESSAGE_SCHEMA: Schema = {
    "setup": _SETUP,
    "clientContent": {"turns": None, "turnComplete": None},
    "realtimeInput": {
        "mediaChunks": None,
        "audio": _BLOB,
        "video": _BLOB,
        "text": None,
        "activityStart": {},
        "activityEnd": {},
        "audioStreamEnd": None,
    },
    "toolResponse": {"functionResponses": _FUNCTION_RESPONSE},
}
MESSAGE_TYPES = tuple(CLIENT_MESSAGE_SCHEMA)


class ProtocolError(Exception):
    """A client message the real service would refuse; carries the close code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


def close_reason(text: str) -> str:
    """Clip a close reason to the 123 bytes a close frame can carry."""
    data = text.encode("utf-8")
    if len(data) <= _MAX_REASON_BYTES:
        return text
    return data[:_MAX_REASON_BYTES].decode("utf-8", errors="ignore")


def to_camel(name: str) -> str:
    """snake_case -> lowerCamel (names already in lowerCamel are unchanged)."""
    return _SNAKE_PART.sub(lambda m: m.group(1).upper(), name)


def to_snake(name: str) -> str:
    """lowerCamel -> snake_case, for error messages in the style of the real parser."""
    return _CAMEL_PART.sub(lambda m: "_" + m.group(1).lower(), name)


def normalize(value: Any, schema: Schema | None = None, path: str = "") -> Any:
    """Return `value` with lowerCamel keys, checking names against `schema`.

    Raises ProtocolError(1007) for an unknown field or a field given twice (once in each
    spelling), as the proto3 JSON parser does.
    """
    if isinstance(value, list):
        return [normalize(item, schema, path) for item in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for raw_key, item in value.items():
        if not isinstance(raw_key, str):
            raise ProtocolError(CLOSE_INVALID_ARGUMENT, "Invalid JSON payload received.")
        key = to_camel(raw_key)
        if key in out:
            raise ProtocolError(
                CLOSE_INVALID_ARGUMENT,
                f'Invalid JSON payload received. Field "{raw_key}" given twice at '
                f"'{path or '<root>'}'.",
            )
        child_schema: Schema | None = None
        if schema is not None:
            if key not in schema:
                raise ProtocolError(
                    CLOSE_INVALID_ARGUMENT,
                    f'Invalid JSON payload received. Unknown name "{raw_key}" at '
                    f"'{path or '<root>'}': Cannot find field.",
                )
            child_schema = schema[key]
        child_path = f"{path}.{to_snake(key)}" if path else to_snake(key)
        out[key] = item if key in _OPAQUE_KEYS else normalize(item, child_schema, child_path)
    return out


def parse_client_message(data: str | bytes) -> dict[str, Any]:
    """Decode one client frame (text or binary JSON) into a normalised message dict.

    The result has exactly one top-level key, one of MESSAGE_TYPES.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        raw = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(
            CLOSE_INVALID_ARGUMENT, f"Invalid JSON payload received. {type(exc).__name__}."
        ) from exc
    if not isinstance(raw, dict):
        raise ProtocolError(CLOSE_INVALID_ARGUMENT, "Invalid JSON payload received.")
    message = normalize(raw, CLIENT_MESSAGE_SCHEMA)
    if len(message) != 1:
        raise ProtocolError(
            CLOSE_INVALID_ARGUMENT,
            "Invalid argument: a client message must set exactly one of "
            "setup, client_content, realtime_input, tool_response.",
        )
    kind = next(iter(message))
    if not isinstance(message[kind], dict):
        raise ProtocolError(
            CLOSE_INVALID_ARGUMENT, f"Invalid JSON payload received. '{to_snake(kind)}'."
        )
    return message


def decode_blob(blob: Any, field: str) -> tuple[bytes, str]:
    """(payload bytes, mime type) of a realtime Blob; 1007 when malformed."""
    if not isinstance(blob, dict) or not isinstance(blob.get("data", ""), str):
        raise ProtocolError(CLOSE_INVALID_ARGUMENT, f"Invalid argument: bad {field} blob.")
    # proto3 JSON takes standard or URL-safe base64, padded or not (the SDK sends URL-safe).
    text = blob.get("data", "").translate(_URLSAFE_TO_STANDARD)
    text += "=" * (-len(text) % 4)
    try:
        payload = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(
            CLOSE_INVALID_ARGUMENT, f"Invalid value at '{field}.data': invalid base64."
        ) from exc
    return payload, str(blob.get("mimeType", ""))


def pcm_rate_hz(mime_type: str) -> int:
    """Sample rate of an `audio/pcm;rate=N` mime type (16 kHz when no rate is given)."""
    mime = mime_type.replace(" ", "").lower()
    if not mime.startswith("audio/pcm"):
        raise ProtocolError(
            CLOSE_INVALID_ARGUMENT,
            f"Invalid argument: unsupported audio mime type {mime_type!r}.",
        )
    for part in mime.split(";")[1:]:
        key, _, value = part.partition("=")
        if key == "rate":
            try:
                rate = int(value)
            except ValueError as exc:
                raise ProtocolError(
                    CLOSE_INVALID_ARGUMENT, f"Invalid argument: bad rate in {mime_type!r}."
                ) from exc
            if rate <= 0:
                raise ProtocolError(CLOSE_INVALID_ARGUMENT, "Invalid argument: bad audio rate.")
            return rate
    return AUDIO_IN_RATE_HZ


def content_text(turns: Any) -> str:
    """Concatenated text of the parts of a clientContent `turns` list."""
    texts: list[str] = []
    if isinstance(turns, dict):
        turns = [turns]
    if not isinstance(turns, list):
        return ""
    for turn in turns:
        if not isinstance(turn, dict):
            continue
        for part in turn.get("parts") or []:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
    return " ".join(t.strip() for t in texts if t.strip())


def declared_function_names(setup: Mapping[str, Any]) -> list[str]:
    """Names of the function declarations in a normalised setup, in order."""
    names: list[str] = []
    for tool in setup.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        for decl in tool.get("functionDeclarations") or []:
            if isinstance(decl, dict) and isinstance(decl.get("name"), str):
                names.append(decl["name"])
    return names


def declared_function_behaviors(setup: Mapping[str, Any]) -> dict[str, str]:
    """Name -> the declaration's ``behavior`` ("BLOCKING", "NON_BLOCKING", or "" if absent)."""
    behaviors: dict[str, str] = {}
    for tool in setup.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        for decl in tool.get("functionDeclarations") or []:
            if isinstance(decl, dict) and isinstance(decl.get("name"), str):
                behaviors[decl["name"]] = str(decl.get("behavior") or "").upper()
    return behaviors


# ---- server messages (camelCase, proto3 defaults omitted) ----


def encode(message: Mapping[str, Any]) -> bytes:
    """Serialise a server message as the real service does: compact UTF-8 JSON bytes."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def duration_text(seconds: float) -> str:
    """proto3 JSON Duration: "50s", "0.250s"."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{seconds:.3f}".rstrip("0") + "s"


def setup_complete() -> dict[str, Any]:
    return {"setupComplete": {}}


def resumption_update(handle: str | None) -> dict[str, Any]:
    """A handle update; `None` gives `{}` (not resumable right now, e.g. while generating)."""
    if handle is None:
        return {"sessionResumptionUpdate": {}}
    return {"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}}


def input_transcription(text: str) -> dict[str, Any]:
    return {"serverContent": {"inputTranscription": {"text": text}}}


def output_transcription(text: str) -> dict[str, Any]:
    return {"serverContent": {"outputTranscription": {"text": text}}}


def audio_part(pcm: bytes) -> dict[str, Any]:
    data = base64.b64encode(pcm).decode("ascii")
    return {
        "serverContent": {
            "modelTurn": {"parts": [{"inlineData": {"mimeType": AUDIO_OUT_MIME, "data": data}}]}
        }
    }


def text_part(text: str) -> dict[str, Any]:
    return {"serverContent": {"modelTurn": {"parts": [{"text": text}]}}}


def generation_complete() -> dict[str, Any]:
    return {"serverContent": {"generationComplete": True}}


def interrupted() -> dict[str, Any]:
    return {"serverContent": {"interrupted": True}}


def turn_complete(prompt_tokens: int, response_tokens: int) -> dict[str, Any]:
    usage: dict[str, Any] = {}
    if prompt_tokens:
        usage["promptTokenCount"] = prompt_tokens
    if response_tokens:
        usage["responseTokenCount"] = response_tokens
    if prompt_tokens + response_tokens:
        usage["totalTokenCount"] = prompt_tokens + response_tokens
    message: dict[str, Any] = {"serverContent": {"turnComplete": True}}
    if usage:
        message["usageMetadata"] = usage
    return message


def tool_call(call_id: str, name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    call: dict[str, Any] = {"id": call_id, "name": name}
    if args:
        call["args"] = dict(args)
    return {"toolCall": {"functionCalls": [call]}}


def tool_call_cancellation(ids: list[str]) -> dict[str, Any]:
    return {"toolCallCancellation": {"ids": list(ids)}}


def go_away(time_left_s: float) -> dict[str, Any]:
    return {"goAway": {"timeLeft": duration_text(time_left_s)}}


UNKNOWN_MESSAGE: dict[str, Any] = {"someFutureMessage": {}}
# Not UTF-8 and not JSON: the SDK's json.loads fails on it.
BAD_FRAME = b"\xff\xfe\x00not json\x00"

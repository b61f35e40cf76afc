"""GeminiConfig -> the SDK's LiveConnectConfig (setup message) and client HttpOptions.

How ``async_client_args`` reach the websocket (google-genai 3.4, ``_api_client.py``
``_ensure_websocket_ssl_ctx``): the client keeps every key of ``async_client_args`` that
is a parameter of ``websockets.asyncio.client.connect`` (plus ``ssl``) and ``live.py``
passes them as ``ws_connect(uri, additional_headers=..., **those)``. So ``ping_interval``,
``ping_timeout``, ``close_timeout``, ``open_timeout`` and ``logger`` go straight to
websockets; the httpx/aiohttp clients filter them out by their own signatures.

Why each websocket setting:
- ping_interval / ping_timeout: the service's pongs were measured at 8-30 s; the
  websockets defaults (20 s / 20 s) kill healthy sessions.
- close_timeout: a handover waits for the old connection's close before resuming (a
  resume while it is open gets 1011); a dead peer must not hold that up for 10 s.
- logger: websockets logs handshake headers at DEBUG, and the API key travels in the
  ``x-goog-api-key`` header. Its records go through a redacting logger instead.
"""

from __future__ import annotations

import logging
import ssl

from google.genai import types

from edge_agent.config import GeminiConfig
from edge_agent.live.tools import ToolRegistry
from edge_agent.secrets import redact

# A child of "websockets" so the daemon's logging setup (which keeps "websockets" at INFO
# even at DEBUG) applies to it too; the filter below masks the key when it does log.
WS_LOGGER_NAME = "websockets.client.gemini_live"
WS_CLOSE_TIMEOUT_S = 2.0
WS_OPEN_TIMEOUT_S = 10.0

_SENSITIVITY_START = {
    "low": types.StartSensitivity.START_SENSITIVITY_LOW,
    "high": types.StartSensitivity.START_SENSITIVITY_HIGH,
}
_SENSITIVITY_END = {
    "low": types.EndSensitivity.END_SENSITIVITY_LOW,
    "high": types.EndSensitivity.END_SENSITIVITY_HIGH,
}


def build_live_connect_config(
    cfg: GeminiConfig, handle: str | None, tools: ToolRegistry | None = None
) -> types.LiveConnectConfig:
    """The setup for one connection; ``handle`` resumes a session (None: fresh session)."""
    if cfg.server_vad:
        detection = types.AutomaticActivityDetection(
            disabled=False,
            start_of_speech_sensitivity=_SENSITIVITY_START[cfg.server_vad_start_sensitivity],
            end_of_speech_sensitivity=_SENSITIVITY_END[cfg.server_vad_end_sensitivity],
            prefix_padding_ms=cfg.server_vad_prefix_padding_ms,
            silence_duration_ms=cfg.server_vad_silence_ms,
        )
    else:
        detection = types.AutomaticActivityDetection(disabled=True)
    config = types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        speech_config=types.SpeechConfig(
            voice_config=types.VoiceConfig(
                prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name=cfg.voice)
            ),
            language_code=cfg.language_code,
        ),
        realtime_input_config=types.RealtimeInputConfig(automatic_activity_detection=detection),
    )
    if cfg.system_instruction:
        config.system_instruction = cfg.system_instruction  # the SDK makes it a Content
    if cfg.input_transcription:
        config.input_audio_transcription = types.AudioTranscriptionConfig()
    if cfg.output_transcription:
        config.output_audio_transcription = types.AudioTranscriptionConfig()
    if cfg.context_window_compression:
        config.context_window_compression = types.ContextWindowCompressionConfig(
            trigger_tokens=cfg.compression_trigger_tokens,
            sliding_window=types.SlidingWindow(target_tokens=cfg.compression_target_tokens),
        )
    if cfg.session_resumption:
        # No `transparent`: the Developer API rejects it (1007); replay is ours to do.
        config.session_resumption = types.SessionResumptionConfig(handle=handle or None)
    if tools is not None and cfg.tools:
        declarations = tools.declarations(list(cfg.tools))
        if declarations:
            config.tools = [types.Tool(function_declarations=declarations)]
    return config


class _RedactingFilter(logging.Filter):
    """Renders the record with secrets masked (handshake headers carry the API key)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not hide the record
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        return True


def websocket_logger() -> logging.Logger:
    """The logger handed to websockets: every record is redacted before any handler."""
    ws_logger = logging.getLogger(WS_LOGGER_NAME)
    if not any(isinstance(f, _RedactingFilter) for f in ws_logger.filters):
        ws_logger.addFilter(_RedactingFilter())
    return ws_logger


def ssl_context_for(cfg: GeminiConfig) -> ssl.SSLContext | None:
    """A context trusting ``ca_file`` (reads the file); None: the SDK's default trust."""
    if not cfg.ca_file:
        return None
    return ssl.create_default_context(cafile=cfg.ca_file)


def build_http_options(
    cfg: GeminiConfig, ssl_context: ssl.SSLContext | None = None
) -> types.HttpOptions:
    """Client HttpOptions: endpoint, API version, TLS trust and websocket keepalive."""
    ws_args: dict[str, object] = {
        "ping_interval": cfg.keepalive_ping_interval_s,
        "ping_timeout": cfg.keepalive_ping_timeout_s,
        "close_timeout": WS_CLOSE_TIMEOUT_S,
        "open_timeout": WS_OPEN_TIMEOUT_S,
        "logger": websocket_logger(),
    }
    if ssl_context is not None:
        ws_args["ssl"] = ssl_context
    return types.HttpOptions(
        base_url=cfg.base_url or None,
        api_version=cfg.api_version,
        async_client_args=ws_args,
    )

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
- create_connection: a cancelled connection closes with 1000, not 1011
  (``live.ws_connection``).
"""

from __future__ import annotations

import logging
import ssl

from google.genai import types

from edge_agent.config import GeminiConfig
from edge_agent.live.profiles import ModelProfile, Support, ThinkingForm, ToolCalls, choose_profile
from edge_agent.live.tool_calls import declaration_behavior
from edge_agent.live.tools import ToolRegistry
from edge_agent.live.ws_connection import LiveClientConnection
from edge_agent.secrets import redact

logger = logging.getLogger(__name__)
_warned_models: set[str] = set()

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


def profile_for(model: str) -> ModelProfile:
    """The model's profile; an unknown name gets the newest family and one WARNING."""
    profile, warning = choose_profile(model)
    if warning is not None and model not in _warned_models:
        _warned_models.add(model)
        logger.warning("%s", warning)
    return profile


def build_live_connect_config(
    cfg: GeminiConfig,
    handle: str | None,
    tools: ToolRegistry | None = None,
    model: str | None = None,
    tool_behavior: ToolCalls | None = None,
) -> types.LiveConnectConfig:
    """The setup for one connection; ``handle`` resumes a session (None: fresh session).

    Built from the profile of ``model`` (default ``cfg.model``): a per-family setting the
    family does not take is left out (``check-config`` refuses it for ``cfg.model``; a
    fallback model simply goes without it). Each tool declaration gets the ``behavior``
    of the family (NON_BLOCKING on 3.8) or the one the tool asks for where the family lets
    a declaration choose; ``tool_behavior`` overrides that for every tool. BLOCKING
    families get no ``behavior`` field (see ``live.tool_calls``).
    """
    profile = profile_for(model or cfg.model)
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
        config.input_audio_transcription = types.AudioTranscriptionConfig(
            language_codes=list(cfg.transcription_language_codes) or None
        )
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
    _apply_family_settings(config, cfg, profile)
    if tools is not None and (cfg.tools or tools.always_declared):
        wanted = [*cfg.tools, *(n for n in tools.always_declared if n not in cfg.tools)]
        declared = tools.declared_behaviors()
        declarations = []
        for declaration in tools.declarations(wanted):
            behavior = declaration_behavior(
                profile, tool_behavior or declared.get(declaration.name or "")
            )
            if behavior is not None:
                declaration = declaration.model_copy(update={"behavior": behavior})
            declarations.append(declaration)
        if declarations:
            config.tools = [types.Tool(function_declarations=declarations)]
    return config


def _apply_family_settings(
    config: types.LiveConnectConfig, cfg: GeminiConfig, profile: ModelProfile
) -> None:
    """Thinking, proactive audio and affective dialog, each only where the family takes it."""
    if profile.thinking is ThinkingForm.LEVEL and cfg.thinking_level in profile.thinking_levels:
        config.thinking_config = types.ThinkingConfig(
            thinking_level=types.ThinkingLevel(cfg.thinking_level.upper())
        )
    elif profile.thinking is ThinkingForm.BUDGET and cfg.thinking_budget is not None:
        config.thinking_config = types.ThinkingConfig(thinking_budget=cfg.thinking_budget)
    # ALWAYS-on proactive audio is not named at all: `false` is refused and `true` is moot.
    if profile.proactive_audio is Support.OPT_IN and cfg.proactive_audio:
        config.proactivity = types.ProactivityConfig(proactive_audio=True)
    if profile.affective_dialog is Support.OPT_IN and cfg.affective_dialog:
        config.enable_affective_dialog = True


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
        "create_connection": LiveClientConnection,
    }
    if ssl_context is not None:
        ws_args["ssl"] = ssl_context
        # The REST calls (the models list, when the model is gone) go through httpx,
        # which takes its trust as `verify`; websockets never sees that key.
        ws_args["verify"] = ssl_context
    return types.HttpOptions(
        base_url=cfg.base_url or None,
        api_version=cfg.api_version,
        async_client_args=ws_args,
    )

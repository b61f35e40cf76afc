"""Live model families and what each one accepts: one table, chosen from the model name.

Live models are retired every few months and each family changed the rules of the setup
message (thinking, proactive audio, affective dialog, tool calls, mid-session text). The
setup builder, ``check-config`` and ``probe`` all ask this table, so a new family is one
new row here. Pure data: no I/O; ``choose_profile`` returns its warning instead of
logging it so callers decide where it goes.

Sources, checked December 2026 (``INFERRED`` in a row marks what they do not say):
- the model pages and migration notes of ai.google.dev (3.8 Live, 3.1 Flash Live);
- google-genai 3.6 types: ``Behavior`` (BLOCKING / NON_BLOCKING, "only supported by the
  BidiGenerateContent method"), ``FunctionResponseScheduling`` (SILENT / WHEN_IDLE /
  INTERRUPT, "only applicable to NON_BLOCKING function calls", default WHEN_IDLE),
  ``ProactivityConfig.proactive_audio``, ``ThinkingConfig.thinking_level`` /
  ``thinking_budget``, ``LiveConnectConfig.enable_affective_dialog``, ``HistoryConfig``;
- public issue reports (livekit/agents #5251, google/adk-python #5018) for 3.1's refusal
  of ``clientContent`` after the first turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import StrEnum


class ToolCalls(StrEnum):
    """How the model treats a function call by default."""

    BLOCKING = "blocking"  # the model waits for the FunctionResponse before going on
    NON_BLOCKING = "non_blocking"  # the conversation goes on; the answer is scheduled


class ThinkingForm(StrEnum):
    """Which thinking setting the family takes (``ThinkingConfig`` field)."""

    LEVEL = "level"  # thinking_level: minimal, low, medium, high
    BUDGET = "budget"  # thinking_budget: tokens, 0 off, -1 automatic
    NONE = "none"  # no thinking_config at all


class MidSessionText(StrEnum):
    """How text reaches the model once the conversation runs."""

    CLIENT_CONTENT = "client_content"  # send_client_content(turns=..., turn_complete=...)
    REALTIME_TEXT = "realtime_text"  # send_realtime_input(text=...)


class Support(StrEnum):
    """Whether an opt-in feature can be set."""

    NONE = "none"  # naming it in the setup is refused (or hangs the setup)
    OPT_IN = "opt_in"  # off unless the setup asks for it
    ALWAYS = "always"  # always on; asking for it off is refused


@dataclass(frozen=True)
class ModelProfile:
    """What one Live model family accepts and how it behaves."""

    family: str
    newest_model: str  # the stable (or newest) model of the family, for fallbacks
    name_pattern: str  # regular expression on the bare model name (no "models/")
    tool_calls: ToolCalls
    blocking_per_tool: bool  # a declaration may ask for the other behaviour
    response_scheduling: bool  # FunctionResponse.scheduling is honoured
    mid_session_text: MidSessionText
    thinking: ThinkingForm
    thinking_levels: tuple[str, ...]  # accepted thinking_level values (LEVEL form only)
    default_thinking_level: str  # "" when the family has none
    proactive_audio: Support
    affective_dialog: Support
    turn_coverage_default: str  # the server's default RealtimeInputConfig.turn_coverage
    turn_complete_interrupts: bool  # clientContent turn_complete=true stops a reply
    several_parts_per_event: bool  # one serverContent may carry audio and transcripts
    legacy: bool
    inferred: tuple[str, ...] = ()  # fields not stated by the sources above

    def matches(self, model: str) -> bool:
        return re.fullmatch(self.name_pattern, bare_model_name(model)) is not None

    @property
    def setup_fields(self) -> frozenset[str]:
        """Optional LiveConnectConfig fields this family accepts (beyond the common ones)."""
        fields = set()
        if self.thinking is not ThinkingForm.NONE:
            fields.add("thinking_config")
        if self.proactive_audio is Support.OPT_IN:
            fields.add("proactivity")
        if self.affective_dialog is Support.OPT_IN:
            fields.add("enable_affective_dialog")
        return frozenset(fields)


GEMINI_3_8_LIVE = ModelProfile(
    family="gemini-3.8-live",
    newest_model="gemini-3.8-live",
    name_pattern=r"gemini-3\.8-live(-\d{2}-\d{4})?",
    tool_calls=ToolCalls.NON_BLOCKING,
    blocking_per_tool=True,
    response_scheduling=True,
    mid_session_text=MidSessionText.CLIENT_CONTENT,
    thinking=ThinkingForm.NONE,
    thinking_levels=(),
    default_thinking_level="",
    proactive_audio=Support.ALWAYS,
    affective_dialog=Support.NONE,
    turn_coverage_default="TURN_INCLUDES_AUDIO_ACTIVITY_AND_ALL_VIDEO",
    turn_complete_interrupts=True,
    several_parts_per_event=True,
    legacy=False,
    # Not on the 3.8 page, carried over from the 3.1 migration notes.
    inferred=("several_parts_per_event",),
)

# "A -extended-thinking variant takes a thinking level": the levels it takes are not
# listed; the 3.1 set is assumed.
GEMINI_3_8_LIVE_EXTENDED_THINKING = replace(
    GEMINI_3_8_LIVE,
    family="gemini-3.8-live-extended-thinking",
    newest_model="gemini-3.8-live-extended-thinking",
    name_pattern=r"gemini-3\.8-live-extended-thinking(-\d{2}-\d{4})?",
    thinking=ThinkingForm.LEVEL,
    thinking_levels=("minimal", "low", "medium", "high"),
    inferred=("several_parts_per_event", "thinking_levels"),
)

GEMINI_3_1_FLASH_LIVE = ModelProfile(
    family="gemini-3.1-flash-live",
    newest_model="gemini-3.1-flash-live-preview",
    name_pattern=r"gemini-3\.1-flash-live(-preview)?(-\d{2}-\d{4})?",
    tool_calls=ToolCalls.BLOCKING,  # "asynchronous function calling: not yet supported"
    blocking_per_tool=False,
    response_scheduling=False,
    # Reported (1007 on clientContent after the first turn; only initial history through
    # HistoryConfig). One revision of the docs says otherwise: taken from the reports.
    mid_session_text=MidSessionText.REALTIME_TEXT,
    thinking=ThinkingForm.LEVEL,
    thinking_levels=("minimal", "low", "medium", "high"),
    default_thinking_level="minimal",
    proactive_audio=Support.NONE,  # a setup naming it was reported never to complete
    affective_dialog=Support.NONE,
    turn_coverage_default="TURN_INCLUDES_AUDIO_ACTIVITY_AND_ALL_VIDEO",
    turn_complete_interrupts=False,
    several_parts_per_event=True,
    legacy=True,
    inferred=("mid_session_text", "turn_complete_interrupts"),
)

GEMINI_2_5_NATIVE_AUDIO = ModelProfile(
    family="gemini-2.5-flash-native-audio",
    newest_model="gemini-2.5-flash-native-audio-preview-12-2025",
    # Developer API names and the alias, and the Vertex AI name.
    name_pattern=(
        r"gemini-2\.5-flash-native-audio-(preview-\d{2}-\d{4}|latest)"
        r"|gemini-live-2\.5-flash-native-audio(-\d{2}-\d{4})?"
    ),
    tool_calls=ToolCalls.BLOCKING,
    # The SDK's Behavior field is accepted on BidiGenerateContent; whether 2.5 honours
    # NON_BLOCKING per tool is not stated for this family, so it is not offered.
    blocking_per_tool=False,
    response_scheduling=False,
    mid_session_text=MidSessionText.CLIENT_CONTENT,
    thinking=ThinkingForm.BUDGET,
    thinking_levels=(),
    default_thinking_level="",
    proactive_audio=Support.OPT_IN,
    affective_dialog=Support.OPT_IN,
    turn_coverage_default="TURN_INCLUDES_ONLY_ACTIVITY",  # the SDK's documented default
    turn_complete_interrupts=False,
    several_parts_per_event=False,
    legacy=True,
    inferred=("blocking_per_tool", "turn_complete_interrupts"),
)

# Newest first: an unknown name gets the first row.
PROFILES: tuple[ModelProfile, ...] = (
    GEMINI_3_8_LIVE,
    GEMINI_3_8_LIVE_EXTENDED_THINKING,
    GEMINI_3_1_FLASH_LIVE,
    GEMINI_2_5_NATIVE_AUDIO,
)
NEWEST_PROFILE = PROFILES[0]
DEFAULT_MODEL = NEWEST_PROFILE.newest_model

# Retired Live models and when (public notices); their names are refused by the service.
RETIRED_MODELS: dict[str, str] = {
    "gemini-live-2.5-flash-preview": "2025-12-09",
    "gemini-2.0-flash-live-001": "2025-12-09",
    "gemini-2.5-flash-native-audio-preview-09-2025": "2026-03",
}


def bare_model_name(model: str) -> str:
    """``models/NAME`` (the SDK and REST form) -> ``NAME``."""
    return model.strip().removeprefix("models/")


def known_profile(model: str) -> ModelProfile | None:
    """The family row of ``model``, or None when no row matches."""
    for profile in PROFILES:
        if profile.matches(model):
            return profile
    return None


def choose_profile(model: str) -> tuple[ModelProfile, str | None]:
    """The profile for ``model``, and a warning when the name is unknown (newest row used)."""
    profile = known_profile(model)
    if profile is not None:
        return profile, None
    warning = (
        f"model {bare_model_name(model)!r} is not a known Live model family; "
        f"assuming the rules of {NEWEST_PROFILE.family}"
    )
    return NEWEST_PROFILE, warning

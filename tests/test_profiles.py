"""The model profile table: chosen from the name; the setup is built from the profile."""

from __future__ import annotations

import logging

import pytest
from google.genai import types

from edge_agent.config import GeminiConfig
from edge_agent.live import connect_config
from edge_agent.live.connect_config import build_live_connect_config
from edge_agent.live.profiles import (
    DEFAULT_MODEL,
    GEMINI_2_5_NATIVE_AUDIO,
    GEMINI_3_1_FLASH_LIVE,
    GEMINI_3_8_LIVE,
    GEMINI_3_8_LIVE_EXTENDED_THINKING,
    PROFILES,
    RETIRED_MODELS,
    MidSessionText,
    Support,
    ThinkingForm,
    ToolCalls,
    choose_profile,
    known_profile,
)
from edge_agent.live.tools import builtin_tools


@pytest.mark.parametrize(
    ("model", "profile"),
    [
        ("gemini-3.8-live", GEMINI_3_8_LIVE),
        ("models/gemini-3.8-live", GEMINI_3_8_LIVE),
        ("gemini-3.8-live-extended-thinking", GEMINI_3_8_LIVE_EXTENDED_THINKING),
        ("gemini-3.1-flash-live-preview", GEMINI_3_1_FLASH_LIVE),
        ("gemini-2.5-flash-native-audio-preview-12-2025", GEMINI_2_5_NATIVE_AUDIO),
        ("gemini-2.5-flash-native-audio-latest", GEMINI_2_5_NATIVE_AUDIO),
        ("gemini-live-2.5-flash-native-audio", GEMINI_2_5_NATIVE_AUDIO),  # Vertex AI
    ],
)
def test_profile_chosen_from_the_model_name(model: str, profile) -> None:
    assert choose_profile(model) == (profile, None)


def test_unknown_name_gets_the_newest_family_and_a_warning() -> None:
    profile, warning = choose_profile("gemini-9.9-live-future")
    assert profile is GEMINI_3_8_LIVE and profile is PROFILES[0]
    assert warning is not None and "gemini-9.9-live-future" in warning
    assert known_profile("gemini-2.5-flash") is None  # a text model is no Live family


def test_unknown_name_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    cfg = GeminiConfig(model="gemini-unknown-live-test-name")
    with caplog.at_level(logging.WARNING, logger=connect_config.__name__):
        build_live_connect_config(cfg, None)
        build_live_connect_config(cfg, None)
    warnings = [r for r in caplog.records if "gemini-unknown-live-test-name" in r.getMessage()]
    assert len(warnings) == 1


def test_the_table_as_documented() -> None:
    assert DEFAULT_MODEL == "gemini-3.8-live" == GeminiConfig().model
    p = GEMINI_3_8_LIVE
    assert (p.tool_calls, p.blocking_per_tool, p.response_scheduling) == (
        ToolCalls.NON_BLOCKING,
        True,
        True,
    )
    assert (p.thinking, p.proactive_audio, p.affective_dialog) == (
        ThinkingForm.NONE,
        Support.ALWAYS,
        Support.NONE,
    )
    assert p.mid_session_text is MidSessionText.CLIENT_CONTENT and p.turn_complete_interrupts
    assert GEMINI_3_8_LIVE_EXTENDED_THINKING.thinking is ThinkingForm.LEVEL
    p = GEMINI_3_1_FLASH_LIVE
    assert (p.tool_calls, p.thinking, p.default_thinking_level) == (
        ToolCalls.BLOCKING,
        ThinkingForm.LEVEL,
        "minimal",
    )
    assert (p.proactive_audio, p.affective_dialog) == (Support.NONE, Support.NONE)
    assert p.mid_session_text is MidSessionText.REALTIME_TEXT and p.legacy
    p = GEMINI_2_5_NATIVE_AUDIO
    assert (p.tool_calls, p.thinking) == (ToolCalls.BLOCKING, ThinkingForm.BUDGET)
    assert (p.proactive_audio, p.affective_dialog) == (Support.OPT_IN, Support.OPT_IN)
    assert p.setup_fields == {"thinking_config", "proactivity", "enable_affective_dialog"}
    assert GEMINI_3_8_LIVE.setup_fields == frozenset()
    # every row says which of its facts are inferred, and names real fields
    names = set(GEMINI_3_8_LIVE.__dataclass_fields__)
    for profile in PROFILES:
        assert set(profile.inferred) <= names
    # retired names are not the default or any family's newest model
    assert not {p.newest_model for p in PROFILES} & set(RETIRED_MODELS)


def _setup(cfg: GeminiConfig, model: str | None = None) -> dict:
    """The setup the SDK would send, as a dict (snake_case SDK fields)."""
    config = build_live_connect_config(cfg, None, builtin_tools(), model=model)
    return config.model_dump(exclude_none=True)


def test_3_8_setup_names_no_thinking_proactivity_or_affective_dialog() -> None:
    cfg = GeminiConfig(proactive_audio=True)  # accepted by check-config, and left out
    setup = _setup(cfg)
    assert not {"thinking_config", "proactivity", "enable_affective_dialog"} & set(setup)
    assert setup["tools"][0]["function_declarations"][0]["name"] == "get_time"
    # the behaviour comes from the profile, said explicitly (NON_BLOCKING on 3.8)
    assert setup["tools"][0]["function_declarations"][0]["behavior"] == types.Behavior.NON_BLOCKING
    setup_3_1 = _setup(GeminiConfig(), model="gemini-3.1-flash-live-preview")
    assert "behavior" not in setup_3_1["tools"][0]["function_declarations"][0]  # blocking family


def test_3_8_blocking_per_tool_when_asked() -> None:
    config = build_live_connect_config(
        GeminiConfig(), None, builtin_tools(), tool_behavior=ToolCalls.BLOCKING
    )
    assert config.tools[0].function_declarations[0].behavior is types.Behavior.BLOCKING
    # 2.5 cannot choose: the declaration stays as it is
    config = build_live_connect_config(
        GeminiConfig(model="gemini-2.5-flash-native-audio-latest"),
        None,
        builtin_tools(),
        tool_behavior=ToolCalls.NON_BLOCKING,
    )
    assert config.tools[0].function_declarations[0].behavior is None


def test_2_5_setup_takes_budget_proactivity_and_affective_dialog() -> None:
    cfg = GeminiConfig(
        model="gemini-2.5-flash-native-audio-preview-12-2025",
        thinking_budget=0,
        proactive_audio=True,
        affective_dialog=True,
    )
    setup = _setup(cfg)
    assert setup["thinking_config"] == {"thinking_budget": 0}
    assert setup["proactivity"] == {"proactive_audio": True}
    assert setup["enable_affective_dialog"] is True
    # false means "not asked for": nothing is named
    off = _setup(GeminiConfig(model=cfg.model, proactive_audio=False, affective_dialog=False))
    assert not {"proactivity", "enable_affective_dialog", "thinking_config"} & set(off)


def test_3_1_setup_takes_a_thinking_level() -> None:
    setup = _setup(GeminiConfig(model="gemini-3.1-flash-live-preview", thinking_level="low"))
    assert setup["thinking_config"] == {"thinking_level": types.ThinkingLevel.LOW}
    assert "proactivity" not in setup and "enable_affective_dialog" not in setup


def test_fallback_model_setup_drops_what_its_family_does_not_take() -> None:
    cfg = GeminiConfig(
        model="gemini-2.5-flash-native-audio-latest",
        thinking_budget=512,
        affective_dialog=True,
        proactive_audio=True,
    )
    setup = _setup(cfg, model="gemini-3.8-live")
    assert not {"thinking_config", "proactivity", "enable_affective_dialog"} & set(setup)
    setup = _setup(cfg, model="gemini-3.1-flash-live-preview")
    assert not {"thinking_config", "proactivity", "enable_affective_dialog"} & set(setup)


def test_transcription_language_hints() -> None:
    setup = _setup(GeminiConfig(transcription_language_codes=("en-US", "de-DE")))
    assert setup["input_audio_transcription"] == {"language_codes": ["en-US", "de-DE"]}
    assert setup["output_audio_transcription"] == {}

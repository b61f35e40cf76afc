"""LED patterns: one distinct, sensible pattern per conversation state."""

from __future__ import annotations

import pytest

from edge_agent.core.leds import OFF, ON, Blink, LedPattern, Off, On, Pulse, pattern_for
from edge_agent.core.state import AgentState


def test_every_state_has_a_pattern_and_no_two_states_look_alike() -> None:
    patterns = {state: pattern_for(state) for state in AgentState}
    assert len(set(patterns.values())) == len(AgentState)


@pytest.mark.parametrize("state", list(AgentState))
def test_patterns_are_well_formed(state: AgentState) -> None:
    pattern = pattern_for(state)
    assert isinstance(pattern, LedPattern)
    for name in ("status", "listen", "mute"):
        mode = getattr(pattern, name)
        assert isinstance(mode, Off | On | Blink | Pulse)
        if isinstance(mode, Blink):
            assert mode.on_s > 0 and mode.off_s > 0
        if isinstance(mode, Pulse):
            assert mode.fade_in_s > 0 and mode.fade_out_s > 0
            assert name == "status", "only the status LED is on a PWM pin"


def test_meaning_of_the_main_states() -> None:
    assert pattern_for(AgentState.IDLE) == LedPattern(OFF, OFF, OFF)
    assert pattern_for(AgentState.LISTENING).listen == ON
    assert pattern_for(AgentState.CONNECTING).listen == ON  # speech is already taken
    assert pattern_for(AgentState.MUTED) == LedPattern(mute=ON)
    assert isinstance(pattern_for(AgentState.THINKING).status, Pulse)
    assert pattern_for(AgentState.SPEAKING).status == ON
    # Only MUTED lights the mute LED steadily; ERROR blinks it.
    for state in AgentState:
        if state is not AgentState.MUTED:
            assert pattern_for(state).mute != ON
    assert isinstance(pattern_for(AgentState.ERROR).mute, Blink)


def test_string_state_names_work_and_unknown_names_fail_loudly() -> None:
    assert pattern_for("muted") == pattern_for(AgentState.MUTED)
    with pytest.raises(KeyError):
        pattern_for("sleeping")


def test_reconnecting_shows_over_each_conversing_state_and_looks_like_no_state() -> None:
    from edge_agent.core.leds import (
        RECONNECTING_STATUS,
        reconnecting_pattern,
        timer_ringing_pattern,
    )

    normal = {pattern_for(state) for state in AgentState} | {timer_ringing_pattern()}
    for state in AgentState:
        shown = reconnecting_pattern(state)
        assert shown.status == RECONNECTING_STATUS
        # The listen and mute LEDs keep saying what the state says (speech still taken).
        assert (shown.listen, shown.mute) == (pattern_for(state).listen, pattern_for(state).mute)
        assert shown not in normal, state

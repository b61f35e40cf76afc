"""The conversation state machine, driven event by event with explicit times."""

from __future__ import annotations

import random

import pytest

from edge_agent.config import ConversationConfig
from edge_agent.core.cues import Cue
from edge_agent.core.events import (
    BargeInDetected,
    BargeInReason,
    EndConversationRequested,
    ListenRequested,
    MuteRequested,
    StopRequested,
    TextTurnKind,
    TextTurnRequested,
    TimerRang,
    TimerRingStopped,
)
from edge_agent.core.leds import pattern_for, reconnecting_pattern, timer_ringing_pattern
from edge_agent.core.policy import NO_BARGE_IN, BargeInRules, Listen, Uplink, decide
from edge_agent.core.state import (
    Action,
    AgentState,
    AudioDeviceLost,
    AudioDeviceRestored,
    ButtonHeld,
    ButtonPressed,
    ButtonReleased,
    CancelTimer,
    CloseSession,
    ConfigReloaded,
    ConversationMachine,
    FlushPlayback,
    GenerationCompleted,
    GoAwayReceived,
    InterruptSession,
    ModelAudioReceived,
    OpenSession,
    PersistMute,
    PlaybackDrained,
    PlayCue,
    SendActivityEnd,
    SendActivityStart,
    SendText,
    ServerInterrupted,
    SessionClosed,
    SessionLost,
    SessionReady,
    SetMicMuted,
    SetTimer,
    ShowLeds,
    SpeechEnded,
    SpeechStarted,
    StopRinging,
    Timer,
    TimerFired,
    TurnCompleted,
    WakeWordDetected,
)

CFG = ConversationConfig(follow_up_s=6.0, idle_close_s=20.0, cues=True, barge_in_by_wake_word=True)
WAKE = WakeWordDetected("hey_jarvis", 0.97, 16_000)
S = AgentState


ALL_BARGE_IN = BargeInRules(wake_word=True, voice=True)


def make(
    config: ConversationConfig = CFG,
    barge_in: BargeInRules = ALL_BARGE_IN,
    muted_at_start: bool = False,
) -> ConversationMachine:
    return ConversationMachine(config, barge_in=barge_in, muted_at_start=muted_at_start)


def of(actions: list[Action], cls: type) -> list[Action]:
    return [a for a in actions if isinstance(a, cls)]


def cues(actions: list[Action]) -> list[Cue]:
    return [a.name for a in actions if isinstance(a, PlayCue)]


def leds(state: AgentState) -> ShowLeds:
    return ShowLeds(pattern_for(state))


def reconnecting(state: AgentState) -> ShowLeds:
    return ShowLeds(reconnecting_pattern(state))


def to_speaking(m: ConversationMachine, t: float = 0.0) -> float:
    """Wake, session ready, one user turn, first reply audio. Returns the last time used."""
    m.handle(WAKE, t + 1.0)
    m.handle(SessionReady(), t + 1.5)
    m.handle(SpeechStarted(17_000), t + 2.0)
    m.handle(SpeechEnded(40_000), t + 3.5)
    m.handle(ModelAudioReceived(), t + 4.0)
    assert m.state is S.SPEAKING
    return t + 4.0


# ------------------------------------------------------------------ waking up


def test_wake_word_in_idle_opens_session_and_starts_uplink_after_the_phrase() -> None:
    m = make()
    actions = m.handle(WAKE, 1.0)
    assert actions == [
        OpenSession(),
        PlayCue(Cue.WAKE),
        SetTimer(Timer.LISTEN, 7.0),
        leds(S.CONNECTING),
    ]
    assert m.state is S.CONNECTING
    assert m.policy.listen is Listen.TURN and m.policy.uplink == Uplink(16_000, 1)
    (t,) = m.last_transitions
    assert (t.from_state, t.to_state, t.at) == (S.IDLE, S.CONNECTING, 1.0)
    assert "hey_jarvis" in t.reason


def test_short_press_in_idle_starts_a_conversation_on_release_from_the_current_sample() -> None:
    m = make()
    assert m.handle(ButtonPressed(), 1.0) == []  # a short press, or the start of a hold?
    assert m.state is S.IDLE
    actions = m.handle(ButtonReleased(), 1.15)
    assert of(actions, OpenSession) and m.policy.uplink == Uplink(None, 1)
    assert m.state is S.CONNECTING
    assert m.handle(ButtonReleased(), 1.3) == []  # a release without its press: nothing


def test_one_breath_command_before_the_session_is_ready_is_kept_in_order() -> None:
    m = make()
    out = m.handle(WAKE, 1.0)
    window = m.policy.uplink
    assert window == Uplink(16_000, 1)  # the uplink opens at the wake, before any speech
    out += m.handle(SpeechStarted(16_100), 1.2)
    assert m.state is S.CONNECTING and m.policy.uplink == window  # the same window goes on
    out += m.handle(SpeechEnded(50_000), 3.0)
    assert m.state is S.THINKING and not m.policy.uplink_open
    ready = m.handle(SessionReady(), 3.4)
    assert m.state is S.THINKING  # the session layer sends the buffered turn now
    assert ready == [SetTimer(Timer.RESPONSE, 3.4 + ConversationMachine.RESPONSE_TIMEOUT_S)]
    out += ready
    order = [type(a) for a in out if isinstance(a, SendActivityStart | SendActivityEnd)]
    assert order == [SendActivityStart, SendActivityEnd]
    assert CancelTimer(Timer.LISTEN) in out
    m.handle(ModelAudioReceived(), 4.0)
    assert m.state is S.SPEAKING


def test_session_ready_rearms_the_listen_timer_so_slow_connects_do_not_eat_the_window() -> None:
    m = make()
    m.handle(WAKE, 1.0)  # listen timer at 7.0
    actions = m.handle(SessionReady(), 3.0)
    assert SetTimer(Timer.LISTEN, 9.0) in actions
    assert actions[-1] == leds(S.LISTENING)
    assert m.handle(TimerFired("listen"), 7.0) == []  # the old deadline is stale
    assert m.state is S.LISTENING
    actions = m.handle(TimerFired("listen"), 9.0)
    assert m.state is S.IDLE
    assert not m.policy.uplink_open and cues(actions) == [Cue.END]


def test_listen_window_never_shorter_than_minimum_even_with_follow_up_off() -> None:
    m = make(ConversationConfig(follow_up_s=0.0))
    actions = m.handle(WAKE, 1.0)
    assert SetTimer(Timer.LISTEN, 1.0 + ConversationMachine.LISTEN_MIN_S) in actions


# ------------------------------------------------------------ reply and follow-up


def test_full_conversation_follow_up_then_idle_then_session_closed_later() -> None:
    m = make()
    to_speaking(m)
    assert m.handle(TurnCompleted(), 5.0) == []  # still playing
    assert m.state is S.SPEAKING
    actions = m.handle(PlaybackDrained(), 6.0)
    assert m.state is S.FOLLOW_UP
    assert actions == [SetTimer(Timer.FOLLOW_UP, 12.0), leds(S.FOLLOW_UP)]
    assert m.policy.uplink == Uplink(None, 2)  # a new window, from the current sample
    actions = m.handle(TimerFired("follow_up"), 12.0)
    assert m.state is S.IDLE and not m.policy.uplink_open
    # The session is kept until idle_close_s after the last thing said (reply end at 6.0).
    assert actions == [
        PlayCue(Cue.END),
        SetTimer(Timer.IDLE_CLOSE, 26.0),
        leds(S.IDLE),
    ]
    assert m.session_open
    assert m.handle(TimerFired("idle_close"), 26.0) == [CloseSession()]
    assert not m.session_open


def test_mid_reply_underrun_does_not_end_the_reply() -> None:
    m = make()
    to_speaking(m)
    m.handle(PlaybackDrained(), 4.5)  # network gap: buffer ran dry
    m.handle(ModelAudioReceived(), 4.8)  # more audio: not drained any more
    m.handle(TurnCompleted(), 5.0)
    assert m.state is S.SPEAKING
    m.handle(PlaybackDrained(), 7.0)
    assert m.state is S.FOLLOW_UP


def test_drained_before_turn_complete_goes_to_follow_up_on_turn_complete() -> None:
    m = make()
    to_speaking(m)
    m.handle(GenerationCompleted(), 4.2)
    m.handle(PlaybackDrained(), 4.5)
    assert m.state is S.SPEAKING
    m.handle(TurnCompleted(), 4.6)
    assert m.state is S.FOLLOW_UP


def test_turn_complete_without_audio_goes_to_follow_up() -> None:
    m = make()
    m.handle(WAKE, 1.0)
    m.handle(SessionReady(), 1.5)
    m.handle(SpeechStarted(17_000), 2.0)
    m.handle(SpeechEnded(30_000), 3.0)
    actions = m.handle(TurnCompleted(), 4.0)
    assert m.state is S.FOLLOW_UP
    assert CancelTimer(Timer.RESPONSE) in actions


def test_speech_in_follow_up_listens_without_wake_word_on_the_kept_session() -> None:
    m = make()
    to_speaking(m)
    m.handle(TurnCompleted(), 5.0)
    m.handle(PlaybackDrained(), 6.0)
    window = m.policy.uplink
    actions = m.handle(SpeechStarted(120_000), 8.0)
    assert m.state is S.LISTENING
    assert actions == [CancelTimer(Timer.FOLLOW_UP), SendActivityStart(), leds(S.LISTENING)]
    assert m.policy.uplink == window  # the follow-up window carries the turn
    m.handle(SpeechEnded(150_000), 10.0)
    assert m.state is S.THINKING


def test_wake_word_in_follow_up_restarts_uplink_after_the_phrase() -> None:
    m = make()
    to_speaking(m)
    m.handle(TurnCompleted(), 5.0)
    m.handle(PlaybackDrained(), 6.0)
    actions = m.handle(WakeWordDetected("hey_jarvis", 0.9, 99_000), 7.0)
    assert m.state is S.LISTENING
    assert m.policy.uplink == Uplink(99_000, 3) and OpenSession() not in actions


def test_follow_up_off_goes_straight_to_idle_after_the_reply() -> None:
    m = make(ConversationConfig(follow_up_s=0.0, idle_close_s=20.0))
    to_speaking(m)
    m.handle(TurnCompleted(), 5.0)
    actions = m.handle(PlaybackDrained(), 6.0)
    assert m.state is S.IDLE
    assert not of(actions, PlayCue)  # the reply itself ended the conversation
    assert SetTimer(Timer.IDLE_CLOSE, 26.0) in actions


def test_wake_in_idle_with_kept_session_goes_straight_to_listening() -> None:
    m = make()
    to_speaking(m)
    m.handle(TurnCompleted(), 5.0)
    m.handle(PlaybackDrained(), 6.0)
    m.handle(TimerFired("follow_up"), 12.0)
    actions = m.handle(WakeWordDetected("hey_jarvis", 0.9, 200_000), 15.0)
    assert m.state is S.LISTENING
    assert OpenSession() not in actions
    assert CancelTimer(Timer.IDLE_CLOSE) in actions
    # The stale idle-close fire must not close the session now in use.
    assert m.handle(TimerFired("idle_close"), 26.0) == []
    assert m.session_open


def test_wake_after_idle_close_opens_a_new_session() -> None:
    m = make()
    to_speaking(m)
    m.handle(TurnCompleted(), 5.0)
    m.handle(PlaybackDrained(), 6.0)
    m.handle(TimerFired("follow_up"), 12.0)
    m.handle(TimerFired("idle_close"), 26.0)
    actions = m.handle(WAKE, 30.0)
    assert actions[0] == OpenSession()
    assert m.state is S.CONNECTING


def test_no_reply_times_out_closes_session_and_plays_error() -> None:
    m = make()
    m.handle(WAKE, 1.0)
    m.handle(SessionReady(), 1.5)
    m.handle(SpeechStarted(17_000), 2.0)
    m.handle(SpeechEnded(30_000), 3.0)
    due = 3.0 + ConversationMachine.RESPONSE_TIMEOUT_S
    assert m.handle(TimerFired("response"), due - 1.0) == []
    actions = m.handle(TimerFired("response"), due)
    assert m.state is S.IDLE
    assert CloseSession() in actions and cues(actions) == [Cue.ERROR]
    assert not of(actions, SetTimer)  # no idle timer for a closed session


# ---------------------------------------------------------------------- policy

# state -> (what the ears listen for, uplink open, a reply is due or playing)
POLICY_TABLE = {
    S.IDLE: (Listen.WAKE_WORD, False, False),
    S.CONNECTING: (Listen.TURN, True, False),
    S.LISTENING: (Listen.TURN, True, False),
    S.THINKING: (Listen.BARGE_IN, False, True),
    S.SPEAKING: (Listen.BARGE_IN, False, True),
    S.FOLLOW_UP: (Listen.TURN, True, False),
    S.MUTED: (Listen.NOTHING, False, False),
    S.OFFLINE: (Listen.WAKE_WORD, False, False),
    S.ERROR: (Listen.NOTHING, False, False),
}


@pytest.mark.parametrize("state", list(AgentState))
def test_policy_of_every_state(state: AgentState) -> None:
    listen, uplink_open, replying = POLICY_TABLE[state]
    rules = BargeInRules(wake_word=True, voice=False)
    window = Uplink(12_345, 7)
    p = decide(state, rules, uplink=window)
    assert p.state is state and p.listen is listen
    assert p.uplink == (window if uplink_open else None) and p.uplink_open is uplink_open
    # Reply audio is played only while a reply is due or playing, and not while the
    # interrupted turn is draining.
    assert p.reply_audio_stale is not replying
    assert decide(state, rules, uplink=window, draining_interrupted_turn=True).reply_audio_stale
    # What counts as barge-in: only while there is a reply to interrupt.
    assert p.barge_in == (rules if replying else None)
    assert p.interrupts(BargeInReason.WAKE_WORD) is replying
    assert not p.interrupts(BargeInReason.SPEECH)  # voice is off in these rules
    if uplink_open:
        with pytest.raises(ValueError):
            decide(state, rules)  # taking the user's turn needs a window
    else:
        assert decide(state, rules) == p


def test_barge_in_rules_button_always_counts_the_rest_as_configured() -> None:
    assert BargeInRules().button and BargeInRules(wake_word=False, voice=False).button
    with pytest.raises(TypeError):
        BargeInRules(button=False)  # type: ignore[call-arg]
    voice_only = BargeInRules(wake_word=False, voice=True)
    assert voice_only.counts(BargeInReason.SPEECH)
    assert not voice_only.counts(BargeInReason.WAKE_WORD)
    assert not NO_BARGE_IN.counts(BargeInReason.SPEECH)
    assert not NO_BARGE_IN.counts(BargeInReason.WAKE_WORD)


def test_machine_policy_follows_the_conversation() -> None:
    m = make()
    assert m.policy == decide(S.IDLE, ALL_BARGE_IN)
    m.handle(WAKE, 1.0)
    assert m.policy == decide(S.CONNECTING, ALL_BARGE_IN, uplink=Uplink(WAKE.end_sample, 1))
    m.handle(SessionReady(), 1.5)
    m.handle(SpeechStarted(17_000), 2.0)
    m.handle(SpeechEnded(40_000), 3.5)
    assert m.policy == decide(S.THINKING, ALL_BARGE_IN)  # the reply is due: barge-in armed
    m.handle(ModelAudioReceived(), 4.0)
    assert m.policy == decide(S.SPEAKING, ALL_BARGE_IN)
    m.handle(ButtonPressed(), 5.0)
    assert m.policy == decide(
        S.LISTENING, ALL_BARGE_IN, uplink=Uplink(None, 2), draining_interrupted_turn=True
    )


# --------------------------------------------------------------------- barge-in


def test_button_barge_in_flushes_interrupts_and_drops_stale_audio_until_turn_complete() -> None:
    m = make()
    to_speaking(m)
    assert m.policy.barge_in is not None and m.policy.barge_in.button
    actions = m.handle(ButtonPressed(), 5.0)
    assert m.state is S.LISTENING
    assert actions[:2] == [FlushPlayback(), InterruptSession()]
    assert m.policy.uplink == Uplink(None, 2) and cues(actions) == [Cue.WAKE]
    assert m.policy.reply_audio_stale
    # Audio of the interrupted reply still in flight, then the server's acknowledgement.
    assert m.handle(ModelAudioReceived(), 5.1) == []
    assert m.handle(ServerInterrupted(), 5.2) == []
    m.handle(SpeechStarted(90_000), 5.3)
    m.handle(SpeechEnded(120_000), 6.0)
    assert m.state is S.THINKING
    assert m.policy.reply_audio_stale  # old turn's turnComplete not seen yet
    assert m.handle(ModelAudioReceived(), 6.1) == []
    assert m.handle(TurnCompleted(), 6.2) == []  # ends the interrupted turn only
    assert m.state is S.THINKING and not m.policy.reply_audio_stale
    m.handle(ModelAudioReceived(), 7.0)
    assert m.state is S.SPEAKING


def test_barge_in_after_the_reply_was_complete_expects_no_stale_audio() -> None:
    m = make()
    to_speaking(m)
    m.handle(TurnCompleted(), 4.5)  # everything received, still playing
    m.handle(ButtonPressed(), 5.0)
    m.handle(SpeechStarted(90_000), 5.3)
    m.handle(SpeechEnded(120_000), 6.0)
    assert not m.policy.reply_audio_stale
    m.handle(ModelAudioReceived(), 6.5)
    assert m.state is S.SPEAKING


def test_voice_barge_in_starts_uplink_at_the_speech_onset_without_a_cue() -> None:
    m = make()
    to_speaking(m)
    assert m.policy.listen is Listen.BARGE_IN and m.policy.interrupts(BargeInReason.SPEECH)
    actions = m.handle(BargeInDetected(BargeInReason.SPEECH, 80_000, 85_000), 5.0)
    assert m.state is S.LISTENING
    assert [FlushPlayback(), InterruptSession()] == [
        a for a in actions if isinstance(a, FlushPlayback | InterruptSession)
    ]
    assert m.policy.uplink == Uplink(80_000, 2)  # from the onset of the interrupting speech
    assert not of(actions, PlayCue)


def test_voice_barge_in_disabled_is_ignored() -> None:
    m = make(barge_in=BargeInRules(wake_word=True, voice=False))
    to_speaking(m)
    assert not m.policy.interrupts(BargeInReason.SPEECH)
    assert m.handle(BargeInDetected(BargeInReason.SPEECH, 80_000), 5.0) == []
    assert m.state is S.SPEAKING


def test_wake_word_barge_in_obeys_config() -> None:
    m = make()
    to_speaking(m)
    assert m.policy.interrupts(BargeInReason.WAKE_WORD)
    actions = m.handle(WakeWordDetected("hey_jarvis", 0.9, 77_000), 5.0)
    assert m.state is S.LISTENING and m.policy.uplink == Uplink(77_000, 2)
    assert InterruptSession() in actions

    off = make(barge_in=BargeInRules(wake_word=False, voice=True))
    to_speaking(off)
    assert not off.policy.interrupts(BargeInReason.WAKE_WORD)
    assert off.handle(WakeWordDetected("hey_jarvis", 0.9, 77_000), 5.0) == []
    assert off.handle(BargeInDetected(BargeInReason.WAKE_WORD, 77_000), 5.0) == []
    assert off.state is S.SPEAKING
    # The detector's wake-word barge-in counts even with voice barge-in off.
    m2 = make(barge_in=BargeInRules(wake_word=True, voice=False))
    to_speaking(m2)
    m2.handle(BargeInDetected(BargeInReason.WAKE_WORD, 77_000), 5.0)
    assert m2.state is S.LISTENING


def test_server_interrupted_flushes_without_interrupting_the_session() -> None:
    m = make()
    to_speaking(m)
    actions = m.handle(ServerInterrupted(), 5.0)
    assert m.state is S.LISTENING
    assert FlushPlayback() in actions and InterruptSession() not in actions
    # The interrupted turn's turnComplete must not count as the next reply's end.
    m.handle(SpeechStarted(90_000), 5.1)
    m.handle(SpeechEnded(100_000), 5.5)
    assert m.handle(TurnCompleted(), 5.6) == []
    assert m.state is S.THINKING


def test_barge_in_while_thinking() -> None:
    m = make()
    m.handle(WAKE, 1.0)
    m.handle(SessionReady(), 1.5)
    m.handle(SpeechStarted(17_000), 2.0)
    m.handle(SpeechEnded(30_000), 3.0)
    actions = m.handle(ButtonPressed(), 3.5)
    assert m.state is S.LISTENING
    assert CancelTimer(Timer.RESPONSE) in actions and InterruptSession() in actions


# ---------------------------------------------------------------------- button


def test_button_while_listening_cancels_or_ends_the_turn() -> None:
    m = make()
    m.handle(WAKE, 1.0)
    m.handle(SessionReady(), 1.5)
    actions = m.handle(ButtonPressed(), 2.0)
    assert m.state is S.IDLE and cues(actions) == [Cue.END]

    m2 = make()
    m2.handle(WAKE, 1.0)
    m2.handle(SessionReady(), 1.5)
    m2.handle(SpeechStarted(17_000), 2.0)
    actions = m2.handle(ButtonPressed(), 3.0)
    assert m2.state is S.THINKING and SendActivityEnd() in actions


def test_button_in_follow_up_dismisses_it() -> None:
    m = make()
    to_speaking(m)
    m.handle(TurnCompleted(), 5.0)
    m.handle(PlaybackDrained(), 6.0)
    actions = m.handle(ButtonPressed(), 7.0)
    assert m.state is S.IDLE
    assert CancelTimer(Timer.FOLLOW_UP) in actions and not m.policy.uplink_open


# ------------------------------------------------------------------------ mute


def test_hold_mutes_from_speaking_and_stops_everything() -> None:
    m = make()
    to_speaking(m)
    actions = m.handle(ButtonHeld(), 5.0)
    assert m.state is S.MUTED
    for expected in (
        SetMicMuted(True),
        FlushPlayback(),
        CloseSession(),
        PersistMute(True),
        PlayCue(Cue.MUTE_ON),
        leds(S.MUTED),
    ):
        assert expected in actions
    assert not m.session_open and not m.policy.uplink_open
    # Nothing wakes a muted device; a hold unmutes.
    for ev in (WAKE, ButtonPressed(), SpeechStarted(1), ModelAudioReceived(), SessionReady()):
        assert m.handle(ev, 6.0) == []
    assert m.policy.listen is Listen.NOTHING
    actions = m.handle(ButtonHeld(), 7.0)
    assert m.state is S.IDLE
    assert actions == [SetMicMuted(False), PersistMute(False), PlayCue(Cue.MUTE_OFF), leds(S.IDLE)]


def test_mute_cancels_every_pending_timer() -> None:
    m = make()
    m.handle(WAKE, 1.0)  # LISTEN timer
    actions = m.handle(ButtonHeld(), 2.0)
    assert CancelTimer(Timer.LISTEN) in actions
    assert m.handle(TimerFired("listen"), 7.0) == []
    assert m.state is S.MUTED


def test_press_then_hold_from_idle_mutes_without_ever_opening_a_session() -> None:
    """Nothing said while the button is held down for mute may reach Gemini."""
    m = make()
    first = m.handle(ButtonPressed(), 1.0)
    second = m.handle(ButtonHeld(), 2.5)
    third = m.handle(ButtonReleased(), 2.8)  # the end of the hold starts nothing
    actions = first + second + third
    assert not of(actions, OpenSession) and not m.policy.uplink_open
    assert m.state is S.MUTED and not m.session_open
    assert cues(actions) == [Cue.MUTE_ON]
    m.handle(ButtonHeld(), 4.0)  # unmute, then wake: the first uplink window ever opened
    m.handle(WAKE, 5.0)
    assert m.policy.uplink == Uplink(WAKE.end_sample, 1)


def test_muted_at_start() -> None:
    m = make(muted_at_start=True)
    assert m.state is S.MUTED
    assert m.initial_actions() == [SetMicMuted(True), leds(S.MUTED)]
    assert m.handle(WAKE, 1.0) == []
    assert make().initial_actions() == [SetMicMuted(False), leds(S.IDLE)]


def test_hold_toggles_mute_from_offline_and_error_too() -> None:
    m = make()
    m.handle(SessionLost("API key not valid", fatal=True), 1.0)
    assert m.state is S.OFFLINE
    m.handle(ButtonHeld(), 2.0)
    assert m.state is S.MUTED
    m.handle(AudioDeviceLost("unplugged"), 3.0)
    assert m.state is S.MUTED  # the mute LED keeps showing mute
    m.handle(ButtonHeld(), 4.0)
    assert m.state is S.ERROR  # unmuted, but the mic is still gone
    m.handle(AudioDeviceRestored(), 5.0)
    assert m.state is S.IDLE


# -------------------------------------------------------------- session trouble


def test_non_fatal_loss_before_a_reply_or_after_it_arrived_whole_changes_nothing() -> None:
    """Listening or thinking: the session layer re-sends the turn, nothing was heard yet.
    A reply whose turnComplete is in plays out: it is whole. Only the status LED says the
    connection is being re-opened, and goes back when the session is ready."""
    m = make()
    m.handle(WAKE, 1.0)
    m.handle(SessionReady(), 1.5)
    m.handle(SpeechStarted(17_000), 2.0)
    lost = SessionLost("1011 deadline expired")
    assert m.handle(lost, 2.5) == [reconnecting(S.LISTENING)]
    assert m.state is S.LISTENING and m.policy.uplink_open
    assert m.handle(SessionLost("retry refused"), 2.6) == []  # already shown
    m.handle(SpeechEnded(40_000), 3.5)
    assert m.handle(SessionReady(resumed=True), 3.55) == [
        leds(S.THINKING),
        SetTimer(Timer.RESPONSE, 23.55),
    ]
    assert m.handle(lost, 3.6) == [reconnecting(S.THINKING)]
    assert m.state is S.THINKING
    assert m.handle(SessionReady(resumed=True), 4.0) == [
        leds(S.THINKING),
        SetTimer(Timer.RESPONSE, 24.0),
    ]
    m.handle(ModelAudioReceived(), 4.5)
    m.handle(TurnCompleted(), 5.0)
    assert m.handle(lost, 5.5) == [reconnecting(S.SPEAKING)]
    assert m.state is S.SPEAKING
    assert m.handle(SessionReady(resumed=True), 6.0) == [leds(S.SPEAKING)]
    assert m.handle(GoAwayReceived(), 7.0) == []
    m.handle(PlaybackDrained(), 9.0)
    assert m.state is S.FOLLOW_UP


@pytest.mark.shelf
def test_the_reconnecting_leds_follow_state_changes_and_end_with_the_session() -> None:
    m = make()
    m.handle(WAKE, 1.0)
    assert m.handle(SessionLost("connection refused"), 1.2) == [reconnecting(S.CONNECTING)]
    # Still reconnecting when the turn ends: THINKING shows the same overlay.
    m.handle(SpeechStarted(17_000), 2.0)
    actions = m.handle(SpeechEnded(40_000), 3.5)
    assert m.state is S.THINKING and of(actions, ShowLeds) == [reconnecting(S.THINKING)]
    # The reply never comes: the conversation ends, the session closes, the LEDs go dark.
    actions = m.handle(TimerFired(Timer.RESPONSE), 3.5 + m.RESPONSE_TIMEOUT_S)
    assert m.state is S.IDLE and of(actions, ShowLeds)[-1] == leds(S.IDLE)
    # The next conversation starts with the state's own pattern.
    actions = m.handle(WAKE, 40.0)
    assert of(actions, ShowLeds) == [leds(S.CONNECTING)]


@pytest.mark.shelf
def test_loss_mid_reply_fades_the_fragment_cues_and_waits_for_the_whole_answer() -> None:
    """The cut reply's question is asked again and answered from the start: the fragment
    fades, the reconnect cue says why, and the answer is awaited (and played) once."""
    m = make()
    t = to_speaking(m)
    actions = m.handle(SessionLost("closed 1011: Internal error encountered."), t + 0.5)
    assert actions == [
        FlushPlayback(),
        PlayCue(Cue.RECONNECT),
        SetTimer(Timer.RESPONSE, t + 0.5 + ConversationMachine.RESPONSE_TIMEOUT_S),
        reconnecting(S.THINKING),  # until the session is back
    ]
    assert m.state is S.THINKING
    assert m.last_transitions[0].reason == "connection lost mid-reply: the question is asked again"
    assert not m.policy.reply_audio_stale and not m.policy.uplink_open  # the answer will play
    ready = m.handle(SessionReady(resumed=True), t + 1.0)
    assert ready == [
        leds(S.THINKING),
        SetTimer(Timer.RESPONSE, t + 1.0 + ConversationMachine.RESPONSE_TIMEOUT_S),
    ]
    assert m.handle(ModelAudioReceived(), t + 1.5) == [
        CancelTimer(Timer.RESPONSE),
        leds(S.SPEAKING),
    ]
    m.handle(TurnCompleted(), t + 2.0)
    m.handle(PlaybackDrained(), t + 3.0)
    assert m.state is S.FOLLOW_UP
    # Cues off: the fragment still fades, silently.
    quiet = make(ConversationConfig(follow_up_s=6.0, idle_close_s=20.0, cues=False))
    t = to_speaking(quiet)
    actions = quiet.handle(SessionLost("network"), t + 0.5)
    assert FlushPlayback() in actions and not cues(actions) and quiet.state is S.THINKING


@pytest.mark.shelf
def test_loss_mid_reply_with_no_reconnect_gives_up_after_the_response_timeout() -> None:
    m = make()
    t = to_speaking(m)
    m.handle(SessionLost("network"), t + 0.5)
    actions = m.handle(TimerFired(Timer.RESPONSE), t + 0.5 + ConversationMachine.RESPONSE_TIMEOUT_S)
    assert CloseSession() in actions and cues(actions) == [Cue.ERROR]
    assert m.state is S.IDLE


@pytest.mark.shelf
def test_loss_during_a_text_turn_sends_the_text_again_on_the_next_connection() -> None:
    """The session layer does not replay text turns: the machine does, whether the drop
    came before the answer or cut it short."""
    m = make()
    m.handle(TextTurnRequested("what is the weather"), 1.0)
    assert of(m.handle(SessionReady(), 1.5), SendText) == [SendText("what is the weather")]
    assert m.handle(SessionLost("network"), 2.0) == [reconnecting(S.THINKING)]
    assert of(m.handle(SessionReady(resumed=True), 2.5), SendText) == [
        SendText("what is the weather")
    ]
    m.handle(ModelAudioReceived(), 3.0)
    actions = m.handle(SessionLost("closed 1011"), 3.5)
    assert FlushPlayback() in actions and cues(actions) == [Cue.RECONNECT]
    assert m.state is S.THINKING
    assert of(m.handle(SessionReady(resumed=True), 4.0), SendText) == [
        SendText("what is the weather")
    ]
    m.handle(ModelAudioReceived(), 4.5)
    m.handle(TurnCompleted(), 5.0)
    m.handle(PlaybackDrained(), 5.5)
    assert m.state is S.IDLE
    assert not of(m.handle(SessionLost("network"), 6.0), SendText)
    assert not of(m.handle(SessionReady(resumed=True), 6.5), SendText)  # answered: not again


@pytest.mark.shelf
def test_loss_while_the_model_speaks_on_its_own_fades_it_and_asks_nothing_again() -> None:
    m = make()
    t = to_speaking(m)
    m.handle(TurnCompleted(), t + 0.5)
    m.handle(PlaybackDrained(), t + 0.6)
    m.handle(ModelAudioReceived(), t + 1.0)  # a tool's answer, unasked
    assert m.state is S.SPEAKING
    actions = m.handle(SessionLost("network"), t + 1.5)
    assert FlushPlayback() in actions and not cues(actions) and not of(actions, SendText)
    assert m.state is S.FOLLOW_UP


def test_non_fatal_loss_or_go_away_while_idle_closes_the_kept_session() -> None:
    m = make()
    to_speaking(m)
    m.handle(TurnCompleted(), 5.0)
    m.handle(PlaybackDrained(), 6.0)
    m.handle(TimerFired("follow_up"), 12.0)
    actions = m.handle(SessionLost("network"), 13.0)
    assert CloseSession() in actions and CancelTimer(Timer.IDLE_CLOSE) in actions

    m2 = make()
    to_speaking(m2)
    m2.handle(TurnCompleted(), 5.0)
    m2.handle(PlaybackDrained(), 6.0)
    m2.handle(TimerFired("follow_up"), 12.0)
    assert CloseSession() in m2.handle(GoAwayReceived(), 13.0)


def test_fatal_loss_goes_offline_and_session_ready_comes_back() -> None:
    m = make()
    to_speaking(m)
    actions = m.handle(SessionLost("1007 API key not valid", fatal=True), 5.0)
    assert m.state is S.OFFLINE
    assert FlushPlayback() in actions and not m.policy.uplink_open
    assert m.policy.listen is Listen.WAKE_WORD  # a wake word while offline plays the error cue
    assert CloseSession() not in actions  # the session layer keeps retrying, slowly
    assert cues(actions) == [Cue.ERROR] and actions[-1] == leds(S.OFFLINE)
    assert cues(m.handle(WAKE, 6.0)) == [Cue.ERROR]
    assert m.state is S.OFFLINE
    m.handle(SessionReady(), 300.0)
    assert m.state is S.IDLE


def test_wake_while_offline_with_no_session_asks_for_one() -> None:
    m = make()
    m.handle(SessionLost("bad key", fatal=True), 1.0)
    m.handle(SessionClosed(), 2.0)  # the session layer gave up
    actions = m.handle(ButtonPressed(), 3.0)
    assert OpenSession() in actions and m.state is S.OFFLINE


def test_unexpected_session_close_during_reply_ends_the_conversation() -> None:
    m = make()
    to_speaking(m)
    actions = m.handle(SessionClosed(), 5.0)
    assert m.state is S.IDLE
    assert FlushPlayback() in actions and cues(actions) == [Cue.ERROR]
    assert not of(actions, SetTimer)
    assert m.handle(WAKE, 6.0)[0] == OpenSession()


def test_stale_session_ready_after_close_is_ignored() -> None:
    m = make()
    m.handle(WAKE, 1.0)
    m.handle(ButtonHeld(), 1.5)  # mute closes the session before it was ready
    m.handle(ButtonHeld(), 2.0)  # unmute
    assert m.handle(SessionReady(), 2.5) == []
    assert m.state is S.IDLE and not m.session_open


# --------------------------------------------------------------------- devices


def test_audio_device_lost_and_restored() -> None:
    m = make()
    to_speaking(m)
    actions = m.handle(AudioDeviceLost("No such device"), 5.0)
    assert m.state is S.ERROR
    assert {type(a) for a in actions} >= {FlushPlayback, CloseSession, ShowLeds}
    assert m.policy.listen is Listen.NOTHING and not m.policy.uplink_open
    assert m.handle(WAKE, 6.0) == []
    assert m.handle(AudioDeviceRestored(), 7.0) == [leds(S.IDLE)]
    assert m.state is S.IDLE


# ------------------------------------------------------------- misc and records


def test_cues_off_means_no_cue_ever() -> None:
    m = make(ConversationConfig(cues=False))
    out = m.handle(WAKE, 1.0)
    out += m.handle(TimerFired("listen"), 7.0)
    out += m.handle(ButtonHeld(), 8.0)
    out += m.handle(ButtonHeld(), 9.0)
    assert not of(out, PlayCue)
    assert m.state is S.IDLE


def test_config_reload_changes_later_decisions() -> None:
    m = make()
    rules = BargeInRules(wake_word=True, voice=False)
    m.handle(ConfigReloaded(ConversationConfig(follow_up_s=10.0), barge_in=rules), 0.5)
    to_speaking(m)
    assert m.policy.barge_in == rules
    m.handle(TurnCompleted(), 5.0)
    assert SetTimer(Timer.FOLLOW_UP, 16.0) in m.handle(PlaybackDrained(), 6.0)


def test_irrelevant_unknown_and_stale_events_are_ignored() -> None:
    m = make()
    assert m.handle(object(), 1.0) == []  # type: ignore[arg-type]
    assert m.handle(TimerFired("no_such_timer"), 1.0) == []
    assert m.handle(TimerFired("follow_up"), 1.0) == []
    assert m.handle(SpeechEnded(5), 1.0) == []
    assert m.handle(TurnCompleted(), 1.0) == []
    assert m.handle(PlaybackDrained(), 1.0) == []
    assert m.state is S.IDLE and list(m.transitions) == []


def test_transitions_are_recorded_once_each_and_bounded() -> None:
    m = make()
    m.handle(WAKE, 1.0)
    lost = m.handle(SessionLost("net"), 1.1)
    assert lost == [reconnecting(S.CONNECTING)] and m.last_transitions == []
    m.handle(SessionReady(), 2.0)
    assert [(t.from_state, t.to_state) for t in m.transitions] == [
        (S.IDLE, S.CONNECTING),
        (S.CONNECTING, S.LISTENING),
    ]
    for i in range(1000):
        m.handle(ButtonHeld(), 3.0 + i)
    assert len(m.transitions) == m.transitions.maxlen


@pytest.mark.parametrize("seed", range(5))
def test_random_event_storms_keep_the_invariants(seed: int) -> None:
    """No exception, no double open, nothing opened or sent while muted, timers consistent."""
    rng = random.Random(seed)
    events = [
        WAKE,
        ButtonPressed(),
        ButtonHeld(),
        ButtonReleased(),
        SpeechStarted(1),
        SpeechEnded(2),
        SessionReady(),
        SessionReady(resumed=True),
        ModelAudioReceived(),
        ServerInterrupted(),
        GenerationCompleted(),
        TurnCompleted(),
        PlaybackDrained(),
        BargeInDetected(BargeInReason.SPEECH, 3),
        BargeInDetected(BargeInReason.WAKE_WORD, 4),
        GoAwayReceived(),
        SessionLost("net"),
        SessionLost("key", fatal=True),
        SessionClosed(),
        AudioDeviceLost("gone"),
        AudioDeviceRestored(),
        *[TimerFired(t.value) for t in Timer],
        TimerRang("pasta"),
        TimerRingStopped("timed_out"),
        TextTurnRequested("hello"),
        TextTurnRequested("dinner", TextTurnKind.ANNOUNCE),
        ListenRequested(),
        StopRequested(),
        MuteRequested(True),
        MuteRequested(False),
        EndConversationRequested(),
    ]
    m = make(barge_in=BargeInRules(wake_word=seed % 3 > 0, voice=bool(seed % 2)))
    now = 0.0
    session_open = False
    pending: dict[Timer, float] = {}
    for _ in range(4000):
        now += rng.choice((0.01, 0.5, 3.0, 25.0))
        ev = rng.choice(events)
        if isinstance(ev, TimerFired) and Timer(ev.name) in pending and rng.random() < 0.7:
            now = max(now, pending[Timer(ev.name)])  # usually fire on time
        before = m.state
        actions = m.handle(ev, now)
        if isinstance(ev, SessionClosed):
            session_open = False
        for a in actions:
            if isinstance(a, OpenSession):
                assert not session_open, "OpenSession while a session is open"
                session_open = True
            elif isinstance(a, CloseSession):
                assert session_open, "CloseSession with no session"
                session_open = False
            elif isinstance(a, SetTimer):
                pending[a.name] = a.at
            elif isinstance(a, CancelTimer):
                assert pending.pop(a.name, None) is not None, "cancel of an unknown timer"
        fired = Timer(ev.name) if isinstance(ev, TimerFired) else None
        if fired in pending and now >= pending[fired] - 0.05:
            del pending[fired]
        if before is S.MUTED and m.state is S.MUTED:
            assert not of(actions, OpenSession)
        policy = m.policy  # consistent in every state reached (decide() would raise)
        assert policy.state is m.state
        assert policy.uplink_open == (policy.listen is Listen.TURN)
        assert policy.reply_audio_stale or m.state in (S.THINKING, S.SPEAKING)
        if m.state is S.MUTED:
            assert not m.session_open and not m.policy.uplink_open and not pending
        assert session_open == m.session_open
        if m.last_transitions:  # the ring's look covers every state while it rings
            look = timer_ringing_pattern() if m.ringing else pattern_for(m.state)
            if m.reconnecting and not m.ringing:
                look = reconnecting_pattern(m.state)
            assert actions[-1] == ShowLeds(look)


# ------------------------------------------------------------- ringing timers

RING = TimerRang("pasta")


def test_a_ring_shows_its_leds_over_any_state_and_the_state_pattern_comes_back() -> None:
    m = make()
    assert m.handle(RING, 1.0) == [ShowLeds(timer_ringing_pattern())]
    m.handle(WAKE, 2.0)  # consumed by the ring: no conversation
    assert m.state is S.IDLE and not m.ringing
    to_speaking(m, 10.0)
    actions = m.handle(RING, 20.0)
    assert actions == [ShowLeds(timer_ringing_pattern())]
    m.handle(TurnCompleted(), 20.5)
    actions = m.handle(PlaybackDrained(), 21.0)
    assert m.state is S.FOLLOW_UP
    assert ShowLeds(timer_ringing_pattern()) in actions  # a state change keeps the ring look
    assert m.handle(TimerRingStopped("timed_out"), 22.0) == [leds(S.FOLLOW_UP)]


def test_a_press_while_ringing_only_stops_the_ring_and_its_release_starts_nothing() -> None:
    m = make()
    m.handle(RING, 1.0)
    assert m.handle(ButtonPressed(), 2.0) == [StopRinging("button"), leds(S.IDLE)]
    assert m.handle(ButtonHeld(), 3.0) == []  # not a mute either
    assert m.handle(ButtonReleased(), 3.5) == []
    assert m.state is S.IDLE and not m.session_open
    m.handle(ButtonPressed(), 5.0)  # the next press is an ordinary one again
    assert of(m.handle(ButtonReleased(), 5.1), OpenSession)


def test_while_ringing_idle_ears_watch_for_the_wake_word_and_voice_with_no_uplink() -> None:
    m = make(barge_in=BargeInRules(wake_word=False, voice=True))
    m.handle(RING, 1.0)
    policy = m.policy
    assert policy.listen is Listen.BARGE_IN and policy.uplink is None
    assert policy.reply_audio_stale  # no reply is due
    assert policy.interrupts(BargeInReason.WAKE_WORD)  # always stops a ring
    assert policy.interrupts(BargeInReason.SPEECH)
    actions = m.handle(BargeInDetected(BargeInReason.SPEECH, 5_000), 2.0)
    assert actions == [StopRinging("voice"), leds(S.IDLE)]
    assert m.state is S.IDLE and m.policy.listen is Listen.WAKE_WORD
    no_aec = make(barge_in=BargeInRules(wake_word=False, voice=False))
    no_aec.handle(RING, 1.0)
    assert not no_aec.policy.interrupts(BargeInReason.SPEECH)  # the mic hears the ring


def test_a_wake_word_over_a_reply_while_ringing_stops_the_ring_and_does_not_barge_in() -> None:
    m = make()
    t = to_speaking(m)
    m.handle(RING, t + 0.5)
    assert m.policy.listen is Listen.BARGE_IN and not m.policy.reply_audio_stale
    actions = m.handle(WAKE, t + 1.0)
    assert actions == [StopRinging("wake_word"), leds(S.SPEAKING)]
    # The same phrase reported by the barge-in detector is not a second command.
    assert m.handle(BargeInDetected(BargeInReason.WAKE_WORD, 16_000), t + 1.1) == []
    assert m.state is S.SPEAKING
    later = m.handle(BargeInDetected(BargeInReason.WAKE_WORD, 90_000), t + 5.0)
    assert of(later, InterruptSession)  # a later wake word barges in as usual


def test_speech_in_a_turn_stops_the_ring_and_stays_in_the_turn() -> None:
    m = make()
    m.handle(WAKE, 1.0)
    m.handle(SessionReady(), 1.5)
    m.handle(RING, 2.0)
    assert m.policy.listen is Listen.TURN  # the user's turn is not taken away
    actions = m.handle(SpeechStarted(30_000), 2.5)
    assert StopRinging("voice") in actions and SendActivityStart() in actions


def test_follow_up_while_ringing_closes_the_uplink_and_reopens_a_new_window_after() -> None:
    m = make()
    t = to_speaking(m)
    m.handle(TurnCompleted(), t + 1)
    m.handle(PlaybackDrained(), t + 2)
    window = m.policy.uplink
    m.handle(RING, t + 3)
    assert m.policy.uplink is None and m.policy.listen is Listen.BARGE_IN
    m.handle(StopRequested(), t + 4)  # `edge-agent stop` stops only the ring
    assert m.state is S.FOLLOW_UP
    assert m.policy.uplink is not None and m.policy.uplink != window


def test_a_ring_ended_elsewhere_restores_the_leds_and_stop_then_ends_the_conversation() -> None:
    m = make()
    t = to_speaking(m)
    m.handle(RING, t)
    assert m.handle(TimerRingStopped("cancelled"), t + 1) == [leds(S.SPEAKING)]
    actions = m.handle(StopRequested(), t + 2)
    assert FlushPlayback() in actions and CloseSession() in actions
    assert m.state is S.IDLE and not m.session_open


# ------------------------------------------------------------------ text turns


def test_say_while_idle_opens_a_session_sends_the_text_when_ready_and_goes_back_to_idle() -> None:
    m = make()
    actions = m.handle(TextTurnRequested("what is the weather"), 1.0)
    assert OpenSession() in actions and not of(actions, SendText) and not cues(actions)
    assert m.state is S.THINKING
    assert m.policy.uplink is None and not m.policy.reply_audio_stale
    assert of(m.handle(SessionReady(), 1.5), SendText) == [SendText("what is the weather")]
    m.handle(ModelAudioReceived(), 2.0)
    m.handle(TurnCompleted(), 3.0)
    m.handle(PlaybackDrained(), 3.5)
    assert m.state is S.IDLE  # no follow-up window after a text from the console


def test_announce_plays_its_cue_even_with_cues_off_and_sends_at_once_on_a_ready_session() -> None:
    m = make(ConversationConfig(follow_up_s=6.0, idle_close_s=20.0, cues=False))
    t = to_speaking(m)
    m.handle(TurnCompleted(), t + 1)
    m.handle(PlaybackDrained(), t + 2)
    assert m.state is S.FOLLOW_UP
    actions = m.handle(TextTurnRequested("dinner is ready", TextTurnKind.ANNOUNCE), t + 3)
    assert cues(actions) == [Cue.WAKE]
    assert SendText("dinner is ready") in actions
    m.handle(ModelAudioReceived(), t + 4)
    m.handle(TurnCompleted(), t + 5)
    m.handle(PlaybackDrained(), t + 6)
    assert m.state is S.FOLLOW_UP  # back to what it was doing


def test_text_turns_queue_behind_a_reply_and_start_in_order_when_it_has_played() -> None:
    m = make()
    t = to_speaking(m)
    assert m.handle(TextTurnRequested("one"), t + 0.1) == []
    m.handle(TextTurnRequested("two", TextTurnKind.ANNOUNCE), t + 0.2)
    assert m.queued_texts == 2 and m.state is S.SPEAKING
    m.handle(TurnCompleted(), t + 1)
    actions = m.handle(PlaybackDrained(), t + 2)
    assert of(actions, SendText) == [SendText("one")] and m.state is S.THINKING
    m.handle(ModelAudioReceived(), t + 3)
    m.handle(TurnCompleted(), t + 4)
    actions = m.handle(PlaybackDrained(), t + 5)
    assert of(actions, SendText) == [SendText("two")] and cues(actions) == [Cue.WAKE]
    assert m.queued_texts == 0


def test_text_turns_are_refused_while_muted_and_dropped_by_a_mute() -> None:
    m = make(muted_at_start=True)
    assert m.handle(TextTurnRequested("hi"), 1.0) == []
    m = make()
    t = to_speaking(m)
    m.handle(TextTurnRequested("later"), t)
    m.handle(MuteRequested(True), t + 1)
    assert m.state is S.MUTED and m.queued_texts == 0


# ------------------------------------------------------------- requests


def test_listen_requested_is_a_wake_without_a_phrase_to_skip() -> None:
    m = make()
    actions = m.handle(ListenRequested(), 1.0)
    assert OpenSession() in actions and m.state is S.CONNECTING
    assert m.policy.uplink == Uplink(None, 1)


def test_mute_and_unmute_requests_name_the_outcome_and_repeat_harmlessly() -> None:
    m = make()
    actions = m.handle(MuteRequested(True), 1.0)
    assert SetMicMuted(True) in actions and PersistMute(True) in actions
    assert m.handle(MuteRequested(True), 2.0) == []
    assert SetMicMuted(False) in m.handle(MuteRequested(False), 3.0)
    assert m.state is S.IDLE
    assert m.handle(MuteRequested(False), 4.0) == []


def test_stop_while_listening_ends_the_conversation_and_closes_the_session() -> None:
    m = make()
    m.handle(WAKE, 1.0)
    m.handle(SessionReady(), 1.5)
    m.handle(SpeechStarted(20_000), 2.0)
    actions = m.handle(StopRequested(), 2.5)
    assert SendActivityEnd() in actions and CloseSession() in actions
    assert m.state is S.IDLE
    assert m.handle(StopRequested(), 3.0) == []  # nothing to stop


def test_end_conversation_waits_for_the_reply_then_closes_instead_of_following_up() -> None:
    m = make()
    t = to_speaking(m)
    assert m.handle(EndConversationRequested(), t) == []
    m.handle(TurnCompleted(), t + 1)
    actions = m.handle(PlaybackDrained(), t + 2)
    assert m.state is S.IDLE and CloseSession() in actions
    t = to_speaking(m, 100.0)  # the next conversation follows up as usual
    m.handle(TurnCompleted(), t + 1)
    m.handle(PlaybackDrained(), t + 2)
    assert m.state is S.FOLLOW_UP
    assert CloseSession() in m.handle(EndConversationRequested(), t + 3)


def test_a_tool_answer_spoken_while_idle_or_in_the_follow_up_is_played() -> None:
    """On 3.8 a non-blocking tool's answer comes as a new generation after the reply
    ended: in the follow-up window or idle (session still open) it is played, and the
    device goes back to where it was: the follow-up window, or idle."""
    m = make()
    t = to_speaking(m)
    m.handle(TurnCompleted(), t + 0.5)
    m.handle(PlaybackDrained(), t + 0.6)
    assert m.state is S.FOLLOW_UP and m.policy.uplink is not None
    actions = m.handle(ModelAudioReceived(), t + 1.0)
    assert m.state is S.SPEAKING and not m.policy.reply_audio_stale
    assert m.policy.uplink is None  # the follow-up window closed while it speaks
    assert CancelTimer(Timer.FOLLOW_UP) in actions
    m.handle(TurnCompleted(), t + 2.0)
    m.handle(PlaybackDrained(), t + 2.1)
    assert m.state is S.FOLLOW_UP
    m.handle(TimerFired(Timer.FOLLOW_UP), t + 2.1 + CFG.follow_up_s)
    assert m.state is S.IDLE and m.session_open
    actions = m.handle(ModelAudioReceived(), t + 9.0)
    assert m.state is S.SPEAKING and CancelTimer(Timer.IDLE_CLOSE) in actions
    m.handle(TurnCompleted(), t + 10.0)
    m.handle(PlaybackDrained(), t + 10.1)
    assert m.state is S.IDLE  # back to idle, not a follow-up window nobody asked for


def test_model_audio_with_no_session_or_while_muted_is_not_played() -> None:
    m = make()
    assert m.handle(ModelAudioReceived(), 1.0) == [] and m.state is S.IDLE  # no session
    muted = make(muted_at_start=True)
    assert muted.handle(ModelAudioReceived(), 1.0) == [] and muted.state is S.MUTED


def test_server_interrupting_an_earlier_generation_while_we_wait_keeps_our_turn() -> None:
    """Our turn went out (THINKING) and the server cuts a generation it was still
    running (a tool's answer; on 3.8 our complete turn interrupts it): its audio is
    stale until its turnComplete, and the answer to our turn then plays."""
    m = make()
    m.handle(WAKE, 1.0)
    m.handle(SessionReady(), 1.5)
    m.handle(SpeechStarted(17_000), 2.0)
    m.handle(SpeechEnded(40_000), 3.5)
    assert m.state is S.THINKING
    assert m.handle(ServerInterrupted(), 3.6) == []
    assert m.state is S.THINKING and m.policy.reply_audio_stale
    assert m.handle(ModelAudioReceived(), 3.7) == []  # the cut generation's last chunk
    assert m.handle(TurnCompleted(), 3.8) == []  # ... and its end
    assert m.state is S.THINKING and not m.policy.reply_audio_stale
    m.handle(ModelAudioReceived(), 4.0)
    assert m.state is S.SPEAKING

"""The conversation state machine: every decision about what the appliance does next.

Pure: no I/O, no clock, no threads. The daemon feeds it events (frozen dataclasses named
in the past tense) with the current monotonic time, and carries out the actions it
returns, in order. All transitions live in this one file, so the behaviour can be read
top to bottom and tested without devices.

How the daemon uses it::

    machine = ConversationMachine(cfg.conversation, barge_in=BargeInRules.from_config(cfg),
                                  muted_at_start=...)
    run(machine.initial_actions())
    ears.apply(machine.policy)
    ...
    actions = machine.handle(event, loop.time())
    for t in machine.last_transitions:            # usually zero or one
        log.info("state %s -> %s: %s", t.from_state, t.to_state, t.reason)
    run(actions)
    ears.apply(machine.policy)

Besides one-shot actions the machine keeps standing orders, ``machine.policy``
(``edge_agent.core.policy``): what the ears listen for, what counts as barge-in, whether
reply audio is stale, whether the uplink is open and from which capture sample. The
daemon hands it to the ears after every event; the uplink window's ``from_sample`` may
lie a little in the past (the end of the wake phrase, the start of a voice barge-in), so
the ears keep a short history of recent capture. Audio captured before the session is
ready is buffered and sent once it is, so "hey jarvis what time is it" in one breath
arrives whole.

Contract for the actions (what the daemon must do with them):

- ``OpenSession`` / ``CloseSession``: open the Live session (the session layer reconnects
  and resumes on its own after non-fatal losses) / close it and stop reconnecting.
- ``SendActivityStart`` / ``SendActivityEnd``: the user's turn markers (local VAD mode);
  they are ordered with the audio, so while the session connects they are buffered
  with it. With server VAD the daemon drops them (the server marks turns itself).
- ``FlushPlayback``: clear the jitter buffer with a short fade (barge-in, mute, error).
- ``InterruptSession``: tell the session the user barged in. Until the interrupted
  turn's ``turnComplete`` arrives, ``policy.reply_audio_stale`` stays True: the daemon
  must check it for every reply chunk and drop stale audio.
- ``ShowLeds(pattern)``, ``PlayCue(name)``, ``PersistMute(muted)`` (store it in the
  state dir so mute survives a restart), ``SetMicMuted(muted)``: while muted nothing
  is captured (close the capture stream, or drop every block in the audio thread; if
  the stream is closed, tell the watchdog gate ``capture_expected=False``).
- ``SetTimer(name, at)`` / ``CancelTimer(name)``: one timer per name; setting a name
  again replaces it. When it fires, send ``TimerFired(name)``. A fire that raced with a
  cancel or a re-arm is recognised and ignored here, so the daemon need not be exact.
- ``SendText(text)``: send ``text`` to the model as a complete turn of its own (only
  emitted once the session is ready).
- ``StopRinging(reason)``: silence every ringing kitchen timer; the daemon answers with
  ``TimerRingStopped`` (which it also sends when a ring ends any other way).

Decisions worth knowing:

- After a reply, the device listens ``follow_up_s`` without the wake word (FOLLOW_UP),
  then goes IDLE but keeps the session open until ``idle_close_s`` after the last thing
  said, so a follow-up or the next wake is answered at once; then ``CloseSession``.
- A button press reacts at press time (barge-in must be instant); a long press also
  sends ``ButtonHeld`` ``hold_s`` later, and every press ends with ``ButtonReleased``.
  From IDLE only the release of a short press starts a conversation: a long press (mute)
  then never opens a session or sends a word of what is said while it is held. That
  costs the length of a short press (~0.1-0.2 s) before the wake cue. While MUTED a
  press does nothing and a hold unmutes.
- Button meaning: IDLE starts listening (on release); while listening with no speech yet, or in
  FOLLOW_UP, it cancels (back to IDLE); while the user is talking it ends the turn
  now; while a reply is due or playing it barges in (the policy's ``BargeInRules``
  say what else does: the wake word, the user's voice).
- A wake word in IDLE must come with its ``end_sample`` so the wake phrase itself is
  never sent to Gemini.
- Non-fatal session losses during a conversation change nothing here but the status LED
  (it blinks evenly until the session is back, so a person sees the network trouble):
  the session layer reconnects and replays buffered user audio. Timers bound every
  wait: no speech after a wake (LISTEN), no reply after a turn (RESPONSE).
- Except a loss that cuts a reply short (SPEAKING, its turnComplete not yet in): the
  question is asked again on the next connection (the session layer re-sends a spoken
  turn that was not answered; a text turn is re-sent from here) and the answer then
  comes from its start. So the fragment fades out (``FlushPlayback``), the quiet
  ``Cue.RECONNECT`` says why, and the device waits for the answer again (THINKING, with
  the RESPONSE timer as the bound): the user hears the answer whole, once. A reply that
  had fully arrived plays out; speech the model made on its own (no turn of ours) is
  not asked for again: it fades and the device goes on as after a reply.
- A fatal loss (bad key, permission) goes OFFLINE; the session layer keeps retrying at
  its slow fatal rate and ``SessionReady`` brings the device back to IDLE. A wake word
  or press while OFFLINE plays the error cue (and asks for a session if none is open).
- Kitchen timers ring whatever the conversation does (``TimerRang`` ..
  ``TimerRingStopped``); the LEDs show the ring pattern over the state's. While one
  rings, the button, the wake word, speech (what the policy lets the ears hear) and
  ``StopRequested`` stop the ring and do nothing else: the press's hold and release are
  used up with it, and the barge-in a wake word also reports is ignored. Speech in a
  turn the user is already taking still belongs to that turn.
- Text turns (``TextTurnRequested``: ``edge-agent say`` / ``announce``, a timer's notice)
  start at once when the device is free (IDLE, FOLLOW_UP) and queue behind a turn or a
  reply otherwise; they go THINKING with no uplink, and after the reply the device goes
  back to what it was doing (IDLE, or the follow-up window it was in).
- ``EndConversationRequested`` (the model's end_conversation tool): after the reply
  plays, go IDLE and close the session instead of listening for a follow-up.
- Events and cues are shared with their producers: ``BargeInDetected`` is the one
  ``edge_agent.core.barge_in.BargeInDetector`` returns (its ``sample`` becomes the
  uplink window's start), ``PlayCue.name`` is an ``edge_agent.core.cues.Cue``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from edge_agent.config import ConversationConfig
from edge_agent.core.cues import Cue
from edge_agent.core.events import (
    AudioDeviceLost,
    AudioDeviceRestored,
    BargeInDetected,
    BargeInReason,
    ButtonHeld,
    ButtonPressed,
    ButtonReleased,
    EndConversationRequested,
    GenerationCompleted,
    GoAwayReceived,
    ListenRequested,
    ModelAudioReceived,
    MuteRequested,
    PlaybackDrained,
    ServerInterrupted,
    SessionClosed,
    SessionLost,
    SessionReady,
    SpeechEnded,
    SpeechStarted,
    StopRequested,
    TextTurnKind,
    TextTurnRequested,
    TimerFired,
    TimerRang,
    TimerRingStopped,
    TurnCompleted,
    WakeWordDetected,
)
from edge_agent.core.leds import (
    LedPattern,
    pattern_for,
    reconnecting_pattern,
    timer_ringing_pattern,
)
from edge_agent.core.policy import AgentState, BargeInRules, ConversationPolicy, Uplink, decide

# AgentState is defined beside the per-state policy (core.policy); importing it from
# here still works.


class _Asked(StrEnum):
    """What the reply being waited for or played answers: what a dropped connection
    must ask again."""

    VOICE = "voice"  # the user's spoken turn: the session layer re-sends it
    TEXT = "text"  # a text turn: re-sent from here (the session layer does not)
    NOTHING = "nothing"  # the model spoke on its own: nothing to ask again


class Timer(StrEnum):
    LISTEN = "listen"  # no speech after a wake or barge-in
    RESPONSE = "response"  # no reply after the user's turn
    FOLLOW_UP = "follow_up"  # the follow-up window is over
    IDLE_CLOSE = "idle_close"  # close the idle session


# ---------------------------------------------------------------------------- events
# The vocabulary lives in core.events; ConfigReloaded is the machine's own input.


@dataclass(frozen=True)
class ConfigReloaded:
    """Apply a reloaded config; ``None`` fields keep the current value."""

    conversation: ConversationConfig | None = None
    barge_in: BargeInRules | None = None


Event = (
    WakeWordDetected
    | ButtonPressed
    | ButtonHeld
    | ButtonReleased
    | SpeechStarted
    | SpeechEnded
    | SessionReady
    | ModelAudioReceived
    | ServerInterrupted
    | GenerationCompleted
    | TurnCompleted
    | PlaybackDrained
    | BargeInDetected
    | GoAwayReceived
    | SessionLost
    | SessionClosed
    | TimerFired
    | AudioDeviceLost
    | AudioDeviceRestored
    | ConfigReloaded
    | TimerRang
    | TimerRingStopped
    | TextTurnRequested
    | ListenRequested
    | StopRequested
    | MuteRequested
    | EndConversationRequested
)

# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class OpenSession:
    pass


@dataclass(frozen=True)
class CloseSession:
    pass


@dataclass(frozen=True)
class SendActivityStart:
    pass


@dataclass(frozen=True)
class SendActivityEnd:
    pass


@dataclass(frozen=True)
class FlushPlayback:
    pass


@dataclass(frozen=True)
class InterruptSession:
    pass


@dataclass(frozen=True)
class ShowLeds:
    pattern: LedPattern


@dataclass(frozen=True)
class PlayCue:
    name: Cue


@dataclass(frozen=True)
class SetTimer:
    name: Timer
    at: float  # monotonic seconds, same clock as ``now``


@dataclass(frozen=True)
class CancelTimer:
    name: Timer


@dataclass(frozen=True)
class PersistMute:
    muted: bool


@dataclass(frozen=True)
class SetMicMuted:
    muted: bool


@dataclass(frozen=True)
class SendText:
    text: str


@dataclass(frozen=True)
class StopRinging:
    reason: str  # button, wake_word, voice, control


Action = (
    OpenSession
    | CloseSession
    | SendActivityStart
    | SendActivityEnd
    | FlushPlayback
    | InterruptSession
    | ShowLeds
    | PlayCue
    | SetTimer
    | CancelTimer
    | PersistMute
    | SetMicMuted
    | SendText
    | StopRinging
)


@dataclass(frozen=True)
class Transition:
    at: float
    from_state: AgentState
    to_state: AgentState
    reason: str


# A timer may fire this much before its deadline (event loops round) and still count.
_TIMER_TOLERANCE_S = 0.05
_HISTORY = 200  # transitions kept for status pages and tests
_MAX_QUEUED_TEXTS = 8  # text turns waiting for the device to be free (oldest dropped)
# A wake word over a ring is reported twice (WakeWordDetected, BargeInDetected): the
# second report within this long of the stop belongs to the same phrase.
_RING_STOP_ECHO_S = 1.0

_CONVERSING = frozenset(
    {
        AgentState.CONNECTING,
        AgentState.LISTENING,
        AgentState.THINKING,
        AgentState.SPEAKING,
        AgentState.FOLLOW_UP,
    }
)
_TAKING_TURN = frozenset({AgentState.CONNECTING, AgentState.LISTENING})
_REPLYING = frozenset({AgentState.THINKING, AgentState.SPEAKING})


class ConversationMachine:
    """Decides, for each event, the next state and the actions that get there.

    ``barge_in`` says what else than the button interrupts a reply (decided from the
    config by ``BargeInRules.from_config``); the server's ``interrupted`` always ends
    it. Unknown or irrelevant events are ignored (``handle`` returns ``[]``); ``handle``
    never raises for a well-formed event.
    """

    # The listening window after a wake is follow_up_s, but never shorter than this:
    # follow_up_s = 0 turns follow-ups off, not listening after the wake word.
    LISTEN_MIN_S = 5.0
    # With no reply audio this long after the user's turn, give up on the turn.
    RESPONSE_TIMEOUT_S = 20.0

    def __init__(
        self,
        config: ConversationConfig,
        *,
        barge_in: BargeInRules,
        muted_at_start: bool = False,
    ) -> None:
        self._config = config
        self._barge_in_rules = barge_in
        self._state = AgentState.MUTED if muted_at_start else AgentState.IDLE
        self._session_open = False  # asked for and not closed (may be reconnecting)
        self._session_ready = False
        self._link_down = False  # the open session lost its connection and is reconnecting
        # The uplink window opened last; open while the state takes the user's turn.
        self._uplink = Uplink(None, 0)
        self._activity_open = False  # SendActivityStart sent, SendActivityEnd not yet
        self._idle_press_pending = False  # the button went down in IDLE, not up yet
        self._turn_complete = False  # the reply being waited for / played is complete
        self._drained = False  # playback has played everything received so far
        self._discard_model_audio = False  # waiting for an interrupted turn to end
        self._audio_ok = True
        self._timers: dict[Timer, float] = {}
        self._ringing = False  # a kitchen timer rings
        self._press_consumed = False  # this press stopped a ring: its hold/release do nothing
        self._ring_stopped_by_wake_at: float | None = None
        self._queued_texts: deque[TextTurnRequested] = deque(maxlen=_MAX_QUEUED_TEXTS)
        self._text_to_send: str | None = None  # a text turn waiting for the session
        self._back_to_follow_up = True  # after this reply: follow-up window (else IDLE)
        self._asked = _Asked.VOICE  # what the current reply answers
        self._asked_text: str | None = None  # the text turn it answers (_Asked.TEXT)
        self._end_requested = False  # end_conversation: close after this reply
        self._last_activity_at: float | None = None
        self._now = 0.0
        self._actions: list[Action] = []
        self.transitions: deque[Transition] = deque(maxlen=_HISTORY)
        self.last_transitions: list[Transition] = []

    # ------------------------------------------------------------------ public API

    @property
    def state(self) -> AgentState:
        return self._state

    @property
    def session_open(self) -> bool:
        """True from OpenSession until CloseSession/SessionClosed (even while reconnecting)."""
        return self._session_open

    @property
    def policy(self) -> ConversationPolicy:
        """The standing orders for now: listening, barge-in, stale audio, uplink."""
        return decide(
            self._state,
            self._barge_in_rules,
            uplink=self._uplink,
            draining_interrupted_turn=self._discard_model_audio,
            ringing=self._ringing,
        )

    @property
    def ringing(self) -> bool:
        return self._ringing

    @property
    def reconnecting(self) -> bool:
        """The conversation's session lost its connection and is not back yet."""
        return self._link_down and self._state in _CONVERSING

    @property
    def queued_texts(self) -> int:
        """Text turns waiting for the device to be free."""
        return len(self._queued_texts)

    def initial_actions(self) -> list[Action]:
        """Bring LEDs and the mic in line with the starting state (call once at start)."""
        muted = self._state is AgentState.MUTED
        return [SetMicMuted(muted), ShowLeds(self._leds())]

    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply one event at monotonic time ``now``; return the actions to carry out."""
        self._now = now
        self._actions = []
        self.last_transitions = []
        self._dispatch(event)
        actions, self._actions = self._actions, []
        return actions

    # ---------------------------------------------------------------- event handlers

    def _dispatch(self, event: Event) -> None:
        if self._ring_consumes(event):
            return
        self._dispatch_event(event)
        if self._queued_texts and self._state in (AgentState.IDLE, AgentState.FOLLOW_UP):
            self._start_text_turn(self._queued_texts.popleft())

    def _dispatch_event(self, event: Event) -> None:
        match event:
            case WakeWordDetected():
                self._on_wake_word(event)
            case ButtonPressed():
                self._on_button_pressed()
            case ButtonHeld():
                self._on_button_held()
            case ButtonReleased():
                self._on_button_released()
            case SpeechStarted():
                self._on_speech_started()
            case SpeechEnded():
                self._on_speech_ended()
            case SessionReady():
                self._on_session_ready(event)
            case ModelAudioReceived():
                self._on_model_audio()
            case ServerInterrupted():
                self._on_server_interrupted()
            case GenerationCompleted():
                pass  # nothing to decide: turnComplete (always sent after it) ends the reply
            case TurnCompleted():
                self._on_turn_completed()
            case PlaybackDrained():
                self._on_playback_drained()
            case BargeInDetected():
                self._on_barge_in(event)
            case GoAwayReceived():
                self._on_go_away()
            case SessionLost():
                self._on_session_lost(event)
            case SessionClosed():
                self._on_session_closed()
            case TimerFired():
                self._on_timer(event)
            case AudioDeviceLost():
                self._on_audio_lost(event)
            case AudioDeviceRestored():
                self._on_audio_restored()
            case ConfigReloaded():
                self._on_config_reloaded(event)
            case TimerRang():
                self._on_timer_rang(event)
            case TimerRingStopped():
                self._on_ring_stopped(event)
            case TextTurnRequested():
                self._on_text_turn(event)
            case ListenRequested():
                self._on_wake("listen requested", from_sample=None)
            case StopRequested():
                self._on_stop_requested()
            case MuteRequested():
                self._on_mute_requested(event)
            case EndConversationRequested():
                self._on_end_requested()
            case _:
                pass  # not ours: ignored

    def _on_wake_word(self, ev: WakeWordDetected) -> None:
        self._on_wake(f"wake word {ev.model} ({ev.score:.2f})", from_sample=ev.end_sample)

    def _on_wake(self, why: str, from_sample: int | None) -> None:
        if self._state is AgentState.IDLE:
            self._start_conversation(why, from_sample=from_sample)
        elif self._state is AgentState.FOLLOW_UP:
            self._listen_again(why, from_sample=from_sample)
        elif self.policy.interrupts(BargeInReason.WAKE_WORD):
            self._barge_in(f"barge-in by {why}", from_sample, interrupt=True, cue=True)
        elif self._state is AgentState.OFFLINE:
            self._offline_nudge()

    def _on_button_pressed(self) -> None:
        if self._state is AgentState.IDLE:
            self._idle_press_pending = True  # a short press (release) or mute (hold)?
        elif self._state in _TAKING_TURN:
            if self._activity_open:
                self._end_turn("button pressed: end of turn")
            else:
                self._end_conversation("button pressed: cancelled", Cue.END)
        elif self._state is AgentState.FOLLOW_UP:
            self._end_conversation("button pressed: follow-up dismissed", Cue.END)
        elif self.policy.barge_in is not None:  # the button always interrupts a reply
            self._barge_in("barge-in by button", None, interrupt=True, cue=True)
        elif self._state is AgentState.OFFLINE:
            self._offline_nudge()
        # MUTED: a press does nothing (a hold unmutes). ERROR: nothing to do.

    def _on_button_released(self) -> None:
        pending, self._idle_press_pending = self._idle_press_pending, False
        if pending and self._state is AgentState.IDLE:
            self._start_conversation("button pressed", from_sample=None)

    def _on_button_held(self) -> None:
        self._idle_press_pending = False  # this press was a hold: it mutes, nothing else
        self._set_muted(self._state is not AgentState.MUTED, "button held")

    def _on_mute_requested(self, ev: MuteRequested) -> None:
        if ev.muted != (self._state is AgentState.MUTED):
            self._set_muted(ev.muted, "mute requested" if ev.muted else "unmute requested")

    def _set_muted(self, muted: bool, why: str) -> None:
        if not muted:
            self._emit(SetMicMuted(False), PersistMute(False))
            self._cue(Cue.MUTE_OFF)
            if self._audio_ok:
                self._go(AgentState.IDLE, f"{why}: unmuted")
            else:
                self._go(AgentState.ERROR, f"{why}: unmuted, audio device still missing")
            return
        self._teardown(flush=True, close_session=True)
        self._emit(SetMicMuted(True), PersistMute(True))
        self._cue(Cue.MUTE_ON)
        self._go(AgentState.MUTED, f"{why}: muted")

    def _on_speech_started(self) -> None:
        if self._state in _TAKING_TURN:
            if not self._activity_open:
                self._emit(SendActivityStart())
                self._activity_open = True
                self._cancel_timer(Timer.LISTEN)
                self._touch()
        elif self._state is AgentState.FOLLOW_UP:
            self._cancel_timer(Timer.FOLLOW_UP)
            self._ensure_session()
            self._emit(SendActivityStart())
            self._activity_open = True
            self._touch()
            self._go(self._turn_state(), "speech during follow-up")

    def _on_speech_ended(self) -> None:
        if self._state in _TAKING_TURN and self._activity_open:
            self._end_turn("speech ended")

    def _on_session_ready(self, ev: SessionReady) -> None:
        if not self._session_open:
            return  # a connection we already gave up on
        self._session_ready = True
        self._show_link_down(False)
        self._discard_model_audio = False  # a new connection carries no stale audio
        why = "session resumed" if ev.resumed else "session ready"
        if self._state is AgentState.CONNECTING:
            if not self._activity_open:
                # Many people wait for the "listening" light: count from now.
                self._set_timer(Timer.LISTEN, self._now + self._listen_window_s())
            self._go(AgentState.LISTENING, why)
        elif self._state is AgentState.THINKING:
            # The turn is (re)sent on this connection: the reply is due from now.
            self._set_timer(Timer.RESPONSE, self._now + self.RESPONSE_TIMEOUT_S)
            if self._text_to_send is not None:
                self._emit(SendText(self._text_to_send))
                self._text_to_send = None
        elif self._state is AgentState.OFFLINE:
            self._go_idle(f"back online ({why})", cue=None)

    def _on_model_audio(self) -> None:
        if (
            self._state in (AgentState.IDLE, AgentState.FOLLOW_UP)
            and self._session_open
            and not self._discard_model_audio
        ):
            self._speak_unasked()
            return
        if self.policy.reply_audio_stale:
            return
        self._drained = False
        self._touch()
        if self._state is AgentState.THINKING:
            self._cancel_timer(Timer.RESPONSE)
            self._go(AgentState.SPEAKING, "reply audio arrived")

    def _on_server_interrupted(self) -> None:
        if self._discard_model_audio:
            return  # the server acknowledging our own interruption
        if self._state is AgentState.THINKING:
            # Nothing of the answer to our turn has come yet, so what the server cut is
            # an earlier generation: a tool's answer it was speaking, or a reply our own
            # new turn interrupted (on 3.8 a complete text turn interrupts a running
            # generation). Its turnComplete is still to come: drop its audio until then
            # and keep waiting for ours.
            self._discard_model_audio = True
            return
        if self._state in _REPLYING:
            self._barge_in("interrupted by the server", None, interrupt=False, cue=False)

    def _speak_unasked(self) -> None:
        """IDLE/FOLLOW_UP -> SPEAKING: the model speaks without a turn of ours (on 3.8 a
        non-blocking tool's answer scheduled for when the conversation is idle, or a
        notice). No user turn is in progress in these states, so it is played; then
        the device goes back to where it was (the follow-up window, or idle)."""
        self._back_to_follow_up = self._state is AgentState.FOLLOW_UP
        for name in (Timer.FOLLOW_UP, Timer.IDLE_CLOSE, Timer.LISTEN):
            self._cancel_timer(name)
        self._activity_open = False
        self._reset_turn()
        self._asked, self._asked_text = _Asked.NOTHING, None
        self._touch()
        self._go(AgentState.SPEAKING, "the model spoke on its own (a tool's answer)")

    def _on_turn_completed(self) -> None:
        if self._discard_model_audio:
            self._discard_model_audio = False  # the interrupted turn is over
            return
        if self._state not in _REPLYING:
            return
        self._turn_complete = True
        self._touch()
        if self._state is AgentState.THINKING:
            self._cancel_timer(Timer.RESPONSE)
            self._follow_up("turn completed without audio")
        elif self._drained:
            self._follow_up("reply played")

    def _on_playback_drained(self) -> None:
        if self._state is not AgentState.SPEAKING:
            return
        self._drained = True
        if self._turn_complete:
            self._touch()
            self._follow_up("reply played")

    def _on_barge_in(self, ev: BargeInDetected) -> None:
        if not self.policy.interrupts(ev.reason):
            return
        if ev.reason == BargeInReason.WAKE_WORD:
            self._barge_in("barge-in by wake word", ev.sample, interrupt=True, cue=True)
        else:
            # No cue: the user is talking, a beep would only land in their turn.
            self._barge_in("voice barge-in", ev.sample, interrupt=True, cue=False)

    def _on_go_away(self) -> None:
        # In a conversation the session layer resumes on a new connection by itself.
        # While idle there is nothing to keep: let the next wake open a fresh one.
        if self._state is AgentState.IDLE and self._session_open:
            self._close_session()

    def _on_session_lost(self, ev: SessionLost) -> None:
        self._session_ready = False
        self._discard_model_audio = False
        if ev.fatal:
            if self._state in (AgentState.MUTED, AgentState.ERROR, AgentState.OFFLINE):
                return
            self._teardown(flush=self._state in _REPLYING, close_session=False)
            self._cue(Cue.ERROR)
            self._go(AgentState.OFFLINE, f"session lost: {ev.reason}")
        elif self._state is AgentState.IDLE and self._session_open:
            self._close_session()  # no reason to reconnect a session nobody is using
        else:
            before = self._state
            newly_down = self._session_open and before in _CONVERSING and not self._link_down
            self._link_down = self._link_down or newly_down
            if before in _REPLYING:
                self._reply_lost_with_connection()
            if newly_down and self._state is before:  # a new state showed it already
                self._emit(ShowLeds(self._leds()))

    def _reply_lost_with_connection(self) -> None:
        """A non-fatal loss while a reply is due or playing (see the module docstring)."""
        if self._turn_complete:
            return  # the whole reply arrived: it plays out
        if self._asked is _Asked.TEXT and self._asked_text is not None:
            self._text_to_send = self._asked_text  # sent again once the session is ready
        if self._state is not AgentState.SPEAKING:
            return  # nothing of the answer heard yet: it simply comes later
        self._emit(FlushPlayback())
        self._touch()
        if self._asked is _Asked.NOTHING:
            self._follow_up("connection lost while the model spoke on its own")
            return
        self._cue(Cue.RECONNECT)
        self._reset_turn()
        self._set_timer(Timer.RESPONSE, self._now + self.RESPONSE_TIMEOUT_S)
        self._go(AgentState.THINKING, "connection lost mid-reply: the question is asked again")

    def _on_session_closed(self) -> None:
        self._session_open = False
        self._session_ready = False
        self._show_link_down(False)
        self._discard_model_audio = False
        self._cancel_timer(Timer.IDLE_CLOSE)
        if self._state is AgentState.FOLLOW_UP:
            self._end_conversation("session closed", cue=None)
        elif self._state in _CONVERSING:
            if self._state is AgentState.SPEAKING:
                self._emit(FlushPlayback())
            self._end_conversation("session closed by the server", Cue.ERROR)

    def _on_timer(self, ev: TimerFired) -> None:
        try:
            name = Timer(ev.name)
        except ValueError:
            return
        due = self._timers.get(name)
        if due is None or self._now < due - _TIMER_TOLERANCE_S:
            return  # cancelled or re-armed since: a stale fire
        del self._timers[name]
        if name is Timer.LISTEN:
            if self._state in _TAKING_TURN and not self._activity_open:
                self._end_conversation("nobody spoke in the listening window", Cue.END)
        elif name is Timer.RESPONSE:
            if self._state is AgentState.THINKING:
                self._close_session()
                self._end_conversation("no reply from the server", Cue.ERROR)
        elif name is Timer.FOLLOW_UP:
            if self._state is AgentState.FOLLOW_UP:
                self._end_conversation("follow-up window over", Cue.END)
        elif name is Timer.IDLE_CLOSE and self._state is AgentState.IDLE and self._session_open:
            self._close_session()

    def _on_audio_lost(self, ev: AudioDeviceLost) -> None:
        self._audio_ok = False
        if self._state in (AgentState.MUTED, AgentState.ERROR):
            return
        self._teardown(flush=True, close_session=True)
        self._go(AgentState.ERROR, f"audio device lost: {ev.reason}")

    def _on_audio_restored(self) -> None:
        self._audio_ok = True
        if self._state is AgentState.ERROR:
            self._go_idle("audio device back", cue=None)

    def _on_config_reloaded(self, ev: ConfigReloaded) -> None:
        # Running timers keep their deadlines; new values apply from the next use.
        if ev.conversation is not None:
            self._config = ev.conversation
        if ev.barge_in is not None:
            self._barge_in_rules = ev.barge_in

    # ------------------------------------------------------- timers, text, requests

    def _ring_consumes(self, event: Event) -> bool:
        """While a timer rings, what stops it is used up by it (True: handled)."""
        match event:
            case ButtonPressed() if self._ringing:
                self._press_consumed = True
                self._stop_ring("button")
                return True
            case ButtonHeld() if self._press_consumed:
                return True
            case ButtonReleased() if self._press_consumed:
                self._press_consumed = False
                return True
            case StopRequested() if self._ringing:
                self._stop_ring("control")
                return True
            case WakeWordDetected() if self._ringing:
                self._ring_stopped_by_wake_at = self._now
                self._stop_ring("wake_word")
                return True
            case BargeInDetected() if self._ringing:
                self._stop_ring("voice" if event.reason is BargeInReason.SPEECH else "wake_word")
                return True
            case BargeInDetected(reason=BargeInReason.WAKE_WORD) if (
                self._ring_stopped_by_wake_at is not None
                and self._now - self._ring_stopped_by_wake_at < _RING_STOP_ECHO_S
            ):
                self._ring_stopped_by_wake_at = None
                return True  # the same phrase that stopped the ring
            case SpeechStarted() if self._ringing:
                self._stop_ring("voice")
                return self._state not in _TAKING_TURN  # a turn in progress keeps its words
        return False

    def _on_timer_rang(self, ev: TimerRang) -> None:
        if not self._ringing:
            self._ringing = True
            self._emit(ShowLeds(self._leds()))

    def _on_ring_stopped(self, ev: TimerRingStopped) -> None:
        if self._ringing:
            self._ring_ended()

    def _stop_ring(self, reason: str) -> None:
        self._emit(StopRinging(reason))
        self._ring_ended()

    def _ring_ended(self) -> None:
        self._ringing = False
        self._emit(ShowLeds(self._leds()))
        if self._state is AgentState.FOLLOW_UP:
            self._open_uplink(None)  # listening again from now: the ring is not a turn

    def _on_text_turn(self, ev: TextTurnRequested) -> None:
        if self._state in (AgentState.IDLE, AgentState.FOLLOW_UP):
            self._start_text_turn(ev)
        elif self._state in _CONVERSING:
            self._queued_texts.append(ev)  # started when the device is free
        # MUTED, OFFLINE, ERROR: nothing can be said (the daemon refuses before asking).

    def _start_text_turn(self, ev: TextTurnRequested) -> None:
        """IDLE/FOLLOW_UP -> THINKING: the text is the turn; no uplink."""
        self._back_to_follow_up = self._state is AgentState.FOLLOW_UP
        for name in (Timer.LISTEN, Timer.FOLLOW_UP, Timer.IDLE_CLOSE):
            self._cancel_timer(name)
        self._ensure_session()
        self._activity_open = False
        self._reset_turn()
        self._asked, self._asked_text = _Asked.TEXT, ev.text
        if ev.kind is TextTurnKind.ANNOUNCE:
            self._emit(PlayCue(Cue.WAKE))  # an announcement always opens with its chime
        if self._session_ready:
            self._emit(SendText(ev.text))
        else:
            self._text_to_send = ev.text
        self._touch()
        self._set_timer(Timer.RESPONSE, self._now + self.RESPONSE_TIMEOUT_S)
        self._go(AgentState.THINKING, f"text turn ({ev.kind.value})")

    def _on_stop_requested(self) -> None:
        self._queued_texts.clear()
        if self._state not in _CONVERSING:
            return
        if self._state in _REPLYING:
            self._emit(FlushPlayback())
        elif self._activity_open:
            self._emit(SendActivityEnd())
        if self._session_open:
            self._close_session()
        self._end_conversation("stop requested", Cue.END)

    def _on_end_requested(self) -> None:
        if self._state in _REPLYING:
            self._end_requested = True  # after the reply has played
        elif self._state in _CONVERSING:
            if self._session_open:
                self._close_session()
            self._end_conversation("the conversation was ended", cue=None)

    # ------------------------------------------------------------- building blocks

    def _start_conversation(self, why: str, from_sample: int | None) -> None:
        """IDLE -> CONNECTING (or LISTENING when the kept-open session is ready)."""
        self._cancel_timer(Timer.IDLE_CLOSE)
        self._end_requested = False
        self._ensure_session()
        self._reset_turn()
        self._activity_open = False
        self._open_uplink(from_sample)
        self._cue(Cue.WAKE)
        self._touch()
        self._set_timer(Timer.LISTEN, self._now + self._listen_window_s())
        self._go(self._turn_state(), why)

    def _listen_again(self, why: str, from_sample: int | None) -> None:
        """FOLLOW_UP -> LISTENING on a wake word: restart the uplink after the phrase."""
        self._cancel_timer(Timer.FOLLOW_UP)
        self._ensure_session()
        self._open_uplink(from_sample)
        self._cue(Cue.WAKE)
        self._touch()
        self._set_timer(Timer.LISTEN, self._now + self._listen_window_s())
        self._go(self._turn_state(), why)

    def _end_turn(self, why: str) -> None:
        """The user's turn is over: mark it, stop sending, wait for the reply."""
        self._emit(SendActivityEnd())
        self._activity_open = False
        self._back_to_follow_up = True
        self._cancel_timer(Timer.LISTEN)
        self._reset_turn()
        self._asked, self._asked_text = _Asked.VOICE, None
        self._touch()
        self._set_timer(Timer.RESPONSE, self._now + self.RESPONSE_TIMEOUT_S)
        self._go(AgentState.THINKING, why)

    def _barge_in(self, why: str, from_sample: int | None, interrupt: bool, cue: bool) -> None:
        """THINKING/SPEAKING -> LISTENING: stop the reply and take the user's turn."""
        self._emit(FlushPlayback())
        if interrupt:
            self._emit(InterruptSession())
        # The server ends an interrupted turn with turnComplete; its audio still in
        # flight until then is stale.
        self._discard_model_audio = not self._turn_complete
        self._reset_turn()
        self._cancel_timer(Timer.RESPONSE)
        self._text_to_send = None
        self._back_to_follow_up = True
        self._open_uplink(from_sample)
        self._activity_open = False
        if cue:
            self._cue(Cue.WAKE)
        self._touch()
        self._set_timer(Timer.LISTEN, self._now + self._listen_window_s())
        self._go(self._turn_state(), why)

    def _follow_up(self, why: str) -> None:
        """The reply is over: listen a while without the wake word, or go idle."""
        self._cancel_timer(Timer.RESPONSE)
        if self._end_requested:
            self._end_requested = False
            if self._session_open:
                self._close_session()
            self._end_conversation(f"{why}; the conversation was ended", cue=None)
            return
        if not self._back_to_follow_up or self._config.follow_up_s <= 0:
            self._end_conversation(why, cue=None)
            return
        self._open_uplink(None)
        self._activity_open = False
        self._set_timer(Timer.FOLLOW_UP, self._now + self._config.follow_up_s)
        self._go(AgentState.FOLLOW_UP, why)

    def _end_conversation(self, why: str, cue: Cue | None) -> None:
        """Any conversation state -> IDLE, keeping an open session for a quick return."""
        self._activity_open = False
        self._text_to_send = None
        for name in (Timer.LISTEN, Timer.RESPONSE, Timer.FOLLOW_UP):
            self._cancel_timer(name)
        self._go_idle(why, cue)

    def _go_idle(self, why: str, cue: Cue | None) -> None:
        if cue is not None:
            self._cue(cue)
        if self._session_open:
            base = self._now if self._last_activity_at is None else self._last_activity_at
            close_at = base + self._config.idle_close_s
            if close_at <= self._now:
                self._close_session()
            else:
                self._set_timer(Timer.IDLE_CLOSE, close_at)
        self._go(AgentState.IDLE, why)

    def _teardown(self, *, flush: bool, close_session: bool) -> None:
        """Stop everything in flight (before MUTED, OFFLINE, ERROR)."""
        if flush:
            self._emit(FlushPlayback())
        for name in list(self._timers):
            self._cancel_timer(name)
        if close_session and self._session_open:
            self._close_session()
        self._activity_open = False
        self._discard_model_audio = False
        self._text_to_send = None
        self._queued_texts.clear()
        self._end_requested = False
        self._reset_turn()

    def _offline_nudge(self) -> None:
        self._cue(Cue.ERROR)
        if not self._session_open:
            self._ensure_session()  # try again: the network or key may be fixed

    def _ensure_session(self) -> None:
        if not self._session_open:
            self._emit(OpenSession())
            self._session_open = True
            self._session_ready = False

    def _close_session(self) -> None:
        self._emit(CloseSession())
        self._session_open = False
        self._session_ready = False
        self._show_link_down(False)
        self._discard_model_audio = False
        self._cancel_timer(Timer.IDLE_CLOSE)

    def _open_uplink(self, from_sample: int | None) -> None:
        """A new uplink window; it stays open while the state takes the user's turn."""
        self._uplink = Uplink(from_sample, self._uplink.number + 1)

    def _reset_turn(self) -> None:
        self._turn_complete = False
        self._drained = False

    def _turn_state(self) -> AgentState:
        return AgentState.LISTENING if self._session_ready else AgentState.CONNECTING

    def _listen_window_s(self) -> float:
        return max(self._config.follow_up_s, self.LISTEN_MIN_S)

    def _touch(self) -> None:
        self._last_activity_at = self._now

    def _set_timer(self, name: Timer, at: float) -> None:
        self._timers[name] = at
        self._emit(SetTimer(name, at))

    def _cancel_timer(self, name: Timer) -> None:
        if self._timers.pop(name, None) is not None:
            self._emit(CancelTimer(name))

    def _cue(self, name: Cue) -> None:
        if self._config.cues:
            self._emit(PlayCue(name))

    def _emit(self, *actions: Action) -> None:
        self._actions.extend(actions)

    def _go(self, to: AgentState, why: str) -> None:
        if to is self._state:
            return
        transition = Transition(self._now, self._state, to, why)
        self._state = to
        self.transitions.append(transition)
        self.last_transitions.append(transition)
        self._emit(ShowLeds(self._leds()))

    def _show_link_down(self, down: bool) -> None:
        """Reconnecting or back: the LEDs change at once, not at the next state change."""
        if down is not self._link_down:
            self._link_down = down
            self._emit(ShowLeds(self._leds()))

    def _leds(self) -> LedPattern:
        if self._ringing:
            return timer_ringing_pattern()
        if self.reconnecting:
            return reconnecting_pattern(self._state)
        return pattern_for(self._state)

"""The conversation's policy: in each state, what the appliance listens for and lets through.

Pure: no I/O, no clock. One place answers, for every ``AgentState``:

- what the ears listen for (``Listen``): the wake word only, the user's turn (VAD gate
  feeding the uplink), a barge-in while a reply is due or playing, or nothing;
- what counts as barge-in (``BargeInRules``): the button always; the wake word when
  configured; the user's voice only with echo cancellation on (without it the mic hears
  the reply itself) and voice barge-in enabled. ``BargeInRules.from_config`` is the one
  place that rule is decided;
- whether reply audio arriving now is stale (outside a reply, or while an interrupted
  turn is still draining from the server);
- whether the uplink is open, and from which capture sample (``Uplink``);
- while a kitchen timer rings: in the states where nobody is taking a turn (IDLE,
  OFFLINE, FOLLOW_UP) the ears watch for what stops the ring (the wake word always, the
  user's voice when it may barge in), with no uplink; in a reply the same rules apply.
  The machine turns what they detect into the ring's end and nothing else.

The conversation machine (``edge_agent.core.state``) keeps the facts (its state, the
current uplink window, whether an interrupted turn is draining) and exposes
``machine.policy``; the machine itself consults it for barge-in, the daemon hands it to
the ears after every event (``Ears.apply``), and nobody else re-decides any of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from edge_agent.core.events import BargeInReason

if TYPE_CHECKING:
    from edge_agent.config import Config


class AgentState(StrEnum):
    IDLE = "idle"  # listening for the wake word only
    CONNECTING = "connecting"  # woken; the session is not ready yet (audio is buffered)
    LISTENING = "listening"  # taking the user's turn
    THINKING = "thinking"  # turn sent, waiting for the reply
    SPEAKING = "speaking"  # playing the reply
    FOLLOW_UP = "follow_up"  # reply done; listening a few seconds without the wake word
    MUTED = "muted"  # nothing captured or sent
    OFFLINE = "offline"  # fatal session trouble (auth, permission, network given up)
    ERROR = "error"  # the audio device is gone


class Listen(StrEnum):
    """What the ears do with the mic audio."""

    WAKE_WORD = "wake_word"  # the wake word only; nothing leaves the device
    TURN = "turn"  # the user's turn: the VAD gate feeds the uplink from `Uplink.from_sample`
    BARGE_IN = "barge_in"  # a reply is due or playing: watch for what `BargeInRules` allows
    NOTHING = "nothing"  # blocks are dropped unheard


# The one table: everything else in a policy follows from what the state listens for.
_LISTEN: dict[AgentState, Listen] = {
    AgentState.IDLE: Listen.WAKE_WORD,
    AgentState.CONNECTING: Listen.TURN,  # audio is buffered until the session is ready
    AgentState.LISTENING: Listen.TURN,
    AgentState.THINKING: Listen.BARGE_IN,  # the reply is due: the user may take it back
    AgentState.SPEAKING: Listen.BARGE_IN,
    AgentState.FOLLOW_UP: Listen.TURN,  # no wake word needed (a wake word restarts the turn)
    AgentState.MUTED: Listen.NOTHING,
    AgentState.OFFLINE: Listen.WAKE_WORD,  # a wake word plays the error cue and retries
    AgentState.ERROR: Listen.NOTHING,  # the machine acts on nothing heard until audio is back
}


@dataclass(frozen=True)
class BargeInRules:
    """What interrupts a reply that is due or playing.

    The button always does (``button`` is not configurable: it is the sure way to stop
    the device talking). ``voice`` is the user talking over the reply for long enough
    (how long is ``edge_agent.core.barge_in.BargeInDetector``'s rule).
    """

    wake_word: bool = True
    voice: bool = True
    button: bool = field(default=True, init=False)

    @classmethod
    def from_config(cls, config: Config) -> BargeInRules:
        """Decide the rules from config.toml. Voice barge-in needs echo cancellation:
        without it the mic hears the reply and the reply would interrupt itself."""
        return cls(
            wake_word=config.conversation.barge_in_by_wake_word,
            voice=config.echo.enabled and config.echo.voice_barge_in,
        )

    def counts(self, reason: BargeInReason) -> bool:
        """Whether a detected barge-in of this kind interrupts the reply."""
        return self.voice if reason is BargeInReason.SPEECH else self.wake_word


NO_BARGE_IN = BargeInRules(wake_word=False, voice=False)  # what an unarmed detector allows

# States whose listening a ringing timer replaces: nobody is taking a turn in them.
_RING_WATCHED = frozenset({AgentState.IDLE, AgentState.OFFLINE, AgentState.FOLLOW_UP})


def ring_rules(rules: BargeInRules) -> BargeInRules:
    """What stops a ringing timer: the wake word always, the voice as it may barge in
    (without echo cancellation the mic hears the ring itself)."""
    return BargeInRules(wake_word=True, voice=rules.voice)


@dataclass(frozen=True)
class Uplink:
    """An open uplink window: from capture sample `from_sample` on, mic audio belongs to
    the conversation (through the VAD gate, so silence still stays local).

    from_sample: None means from wherever capture is when the window is carried out; a
        sample in the past (the end of the wake phrase, the onset of a voice barge-in) is
        reached through the ears' short history of recent capture.
    number: counts the windows the machine opened; a new number restarts the gate even
        at the same sample (e.g. a wake word during the follow-up window).
    """

    from_sample: int | None
    number: int


@dataclass(frozen=True)
class ConversationPolicy:
    """The standing orders for one state, as plain data (see the module docstring)."""

    state: AgentState
    listen: Listen
    barge_in: BargeInRules | None  # None: no reply is due or playing, nothing to interrupt
    reply_audio_stale: bool  # drop reply chunks that arrive now
    uplink: Uplink | None  # None: nothing is sent

    @property
    def uplink_open(self) -> bool:
        return self.uplink is not None

    def interrupts(self, reason: BargeInReason) -> bool:
        """Whether a detected barge-in of this kind stops the reply in this state."""
        return self.barge_in is not None and self.barge_in.counts(reason)


def decide(
    state: AgentState,
    rules: BargeInRules,
    *,
    uplink: Uplink | None = None,
    draining_interrupted_turn: bool = False,
    ringing: bool = False,
) -> ConversationPolicy:
    """The policy for `state` under `rules`.

    uplink: the window the machine opened last; required for states that take the
        user's turn, ignored (closed) in every other state.
    draining_interrupted_turn: the user barged in and the server has not yet ended the
        interrupted turn, so its reply audio still in flight is stale.
    ringing: a kitchen timer rings (see the module docstring).
    """
    listen = _LISTEN[state]
    if listen is Listen.TURN and uplink is None:
        raise ValueError(f"state {state} takes the user's turn: it needs an uplink window")
    replying = listen is Listen.BARGE_IN
    barge_in = rules if replying else None
    if ringing and (replying or state in _RING_WATCHED):
        listen, barge_in = Listen.BARGE_IN, ring_rules(rules)
    return ConversationPolicy(
        state=state,
        listen=listen,
        barge_in=barge_in,
        reply_audio_stale=not replying or draining_interrupted_turn,
        uplink=uplink if listen is Listen.TURN else None,
    )

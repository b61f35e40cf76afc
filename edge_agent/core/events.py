"""The appliance's one event vocabulary: what happened, as frozen dataclasses.

Every producer emits these types and nothing else: the wake word detector and the VAD
gate (through the ears), the barge-in detector, the GPIO panel, the Live session and the
daemon's own timers and playback. The conversation machine (`core.state`) consumes them,
so nothing translates between two copies of the same fact. Names are in the past tense;
sample positions are 16 kHz capture samples counted since the capture stream started.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# ------------------------------------------------------------------- the ears


@dataclass(frozen=True)
class WakeWordDetected:
    """`model` fired with `score`; the wake phrase ended at capture sample `end_sample`."""

    model: str
    score: float
    end_sample: int


class SpeechEndReason(StrEnum):
    """Why an utterance ended."""

    SILENCE = "silence"  # `speech_end_ms` of silence after the last speech frame
    MAX_LENGTH = "max_length"  # the utterance reached `max_utterance_s`


@dataclass(frozen=True)
class SpeechStarted:
    """Speech opened the gate; `sample` is the first speech frame of the onset run."""

    sample: int


@dataclass(frozen=True)
class SpeechEnded:
    """The utterance ended at `sample` (the end of the last speech frame, or where the
    gate cut a MAX_LENGTH utterance)."""

    sample: int
    reason: SpeechEndReason = SpeechEndReason.SILENCE


@dataclass(frozen=True)
class UplinkAudio:
    """Audio to send: s16le mono PCM starting at stream position `start_sample`."""

    pcm: bytes = field(repr=False)
    start_sample: int

    @property
    def end_sample(self) -> int:
        return self.start_sample + len(self.pcm) // 2


class BargeInReason(StrEnum):
    SPEECH = "speech"
    WAKE_WORD = "wake_word"


@dataclass(frozen=True)
class BargeInDetected:
    """The user interrupted playback.

    sample: where the interrupting audio begins, ready for the uplink: for SPEECH the
        onset of the speech run minus a short pre-roll, for WAKE_WORD the estimated end
        of the wake phrase.
    detected_sample: stream position at which the decision was made (the end of the
        frame that crossed the threshold); None when not known.
    """

    reason: BargeInReason
    sample: int
    detected_sample: int | None = None


# ------------------------------------------------------------------ the button


@dataclass(frozen=True)
class ButtonPressed:
    """Reported at press time, so a barge-in reacts at once."""


@dataclass(frozen=True)
class ButtonHeld:
    """The button stayed down `hold_s`."""


@dataclass(frozen=True)
class ButtonReleased:
    """Every counted press ends with one release."""


# ---------------------------------------------------------------- the Live session


@dataclass(frozen=True)
class SessionReady:
    resumed: bool = False  # True: the server still has the conversation (handle accepted)


@dataclass(frozen=True)
class ModelAudioReceived:
    """A chunk of the reply: 24 kHz mono s16le."""

    pcm24k: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class InputTranscript:
    text: str


@dataclass(frozen=True)
class OutputTranscript:
    text: str


@dataclass(frozen=True)
class ServerInterrupted:
    """The server cut its reply (its VAD heard the user, or our activityStart)."""


@dataclass(frozen=True)
class GenerationCompleted:
    pass


@dataclass(frozen=True)
class TurnCompleted:
    pass


@dataclass(frozen=True)
class ToolCalled:
    name: str
    args: dict[str, Any]
    call_id: str | None = None


@dataclass(frozen=True)
class ToolCallCancelled:
    call_ids: tuple[str, ...]


@dataclass(frozen=True)
class GoAwayReceived:
    time_left_s: float = 0.0


@dataclass(frozen=True)
class SessionLost:
    reason: str
    fatal: bool = False
    retry_in_s: float = 0.0


@dataclass(frozen=True)
class SessionClosed:
    """The session is closed for good (we asked, or it ended without reconnecting)."""


# ------------------------------------------------------ playback, devices, timers


@dataclass(frozen=True)
class PlaybackDrained:
    """The jitter buffer played everything it was given (may also happen mid-reply on a
    network gap; more model audio simply un-drains it)."""


@dataclass(frozen=True)
class TimerFired:
    name: str


@dataclass(frozen=True)
class AudioDeviceLost:
    reason: str


@dataclass(frozen=True)
class AudioDeviceRestored:
    pass


# ------------------------------------------------- timers that ring, and requests


@dataclass(frozen=True)
class TimerRang:
    """A kitchen timer started ringing (the ringer repeats the cue; the machine decides
    what the button, the wake word and speech mean while it rings)."""

    label: str


@dataclass(frozen=True)
class TimerRingStopped:
    """No timer rings any more (stopped, cancelled or rang for `max_ring_s`)."""

    reason: str


class TextTurnKind(StrEnum):
    """Where a text turn for the model comes from."""

    SAY = "say"  # `edge-agent say`: the text is the user's turn
    ANNOUNCE = "announce"  # `edge-agent announce`: a cue, then the model says it verbatim
    NOTICE = "notice"  # the device tells the model something (a timer ended)


@dataclass(frozen=True)
class TextTurnRequested:
    """Send `text` to the model as a turn of its own and play the reply (queued behind a
    reply that is playing or a turn the user is taking)."""

    text: str
    kind: TextTurnKind = TextTurnKind.SAY


@dataclass(frozen=True)
class ListenRequested:
    """`edge-agent trigger`: listen as if the wake word was heard."""


@dataclass(frozen=True)
class StopRequested:
    """`edge-agent stop`: stop a ringing timer, or else end the conversation."""


@dataclass(frozen=True)
class MuteRequested:
    """`edge-agent mute` / `unmute`: the same as a long press, with the outcome named."""

    muted: bool


@dataclass(frozen=True)
class EndConversationRequested:
    """The model called end_conversation: stop listening once its reply has played."""


EarEvent = WakeWordDetected | SpeechStarted | SpeechEnded | UplinkAudio | BargeInDetected
ButtonEvent = ButtonPressed | ButtonHeld | ButtonReleased
LiveEvent = (
    SessionReady
    | ModelAudioReceived
    | InputTranscript
    | OutputTranscript
    | ServerInterrupted
    | GenerationCompleted
    | TurnCompleted
    | ToolCalled
    | ToolCallCancelled
    | GoAwayReceived
    | SessionLost
    | SessionClosed
)

"""What the three LEDs show in each state: a pure function of the conversation state.

Pure: no GPIO, no clock. The GPIO adapter (``edge_agent.device.gpio``) turns a
``LedPattern`` into gpiozero calls; keeping the table here means the look of the
appliance is reviewed and tested in one place, without hardware.

The board has three LEDs:

- ``status`` (PWM-capable pin): what the assistant is doing (connecting, thinking,
  speaking, offline). Pulses need PWM; the adapter degrades a pulse on a plain pin to
  a blink with the same timing.
- ``listen``: lit while the device is taking your speech.
- ``mute``: lit while the microphone is muted; blinks on a device error.

Every state has its own pattern, so a person can tell the state from the LEDs alone.
IDLE is all dark, like most kitchen appliances: light means "something is happening".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_agent.core.state import AgentState


@dataclass(frozen=True)
class Off:
    """LED dark."""


@dataclass(frozen=True)
class On:
    """LED steadily lit."""


@dataclass(frozen=True)
class Blink:
    """Hard on/off blinking, repeated until the pattern changes."""

    on_s: float
    off_s: float


@dataclass(frozen=True)
class Pulse:
    """Smooth fade in and out (PWM), repeated until the pattern changes."""

    fade_in_s: float
    fade_out_s: float


LedMode = Off | On | Blink | Pulse

OFF = Off()
ON = On()


@dataclass(frozen=True)
class LedPattern:
    """The mode of each of the three LEDs."""

    status: LedMode = OFF
    listen: LedMode = OFF
    mute: LedMode = OFF


def _table() -> dict[str, LedPattern]:
    # Keyed by the state's string value so this module does not import state.py at
    # runtime (state.py imports this module to build ShowLeds actions).
    return {
        "idle": LedPattern(),
        "connecting": LedPattern(status=Pulse(0.25, 0.25), listen=ON),
        "listening": LedPattern(listen=ON),
        "thinking": LedPattern(status=Pulse(0.6, 0.6)),
        "speaking": LedPattern(status=ON),
        "follow_up": LedPattern(listen=Blink(0.8, 0.2)),
        "muted": LedPattern(mute=ON),
        "offline": LedPattern(status=Blink(0.2, 1.8)),
        "error": LedPattern(mute=Blink(0.25, 0.25)),
    }


_PATTERNS = _table()


def pattern_for(state: AgentState | str) -> LedPattern:
    """The LED pattern for a conversation state (``AgentState`` or its string value).

    Raises KeyError for a state that has no pattern, so a new state cannot ship dark
    by accident (a test checks every ``AgentState`` member).
    """
    return _PATTERNS[str(state)]


# A ringing timer: status and listen blink together, fast. Shown over the state's pattern
# while a timer rings (it rings whether or not a conversation is open), so it differs from
# every state's pattern.
TIMER_RINGING = LedPattern(status=Blink(0.25, 0.25), listen=Blink(0.25, 0.25))


def timer_ringing_pattern() -> LedPattern:
    """The LEDs while a timer rings."""
    return TIMER_RINGING


# A conversation whose connection dropped and is being re-opened: the status LED blinks
# evenly (1 Hz) over the state's own pattern, so the listen LED still says whether speech
# is being taken (it is kept and sent once the connection is back).
RECONNECTING_STATUS = Blink(0.5, 0.5)


def reconnecting_pattern(state: AgentState | str) -> LedPattern:
    """The LEDs of ``state`` while its session reconnects."""
    return replace(pattern_for(state), status=RECONNECTING_STATUS)

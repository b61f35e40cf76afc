"""Earcons: short procedurally generated sounds for state changes, mixed into the speaker output.

Each cue is synthesised with numpy (no files to ship or lose): sine partials with a little
second harmonic for warmth, a raised-cosine attack and release so a cue starts and ends at
zero, and a per-cue level so they sit together. They are deliberately distinct in pitch and
contour, so they can be told apart without looking at the LEDs:

=========  ==============================================  ===========================
cue        sound                                           meaning
=========  ==============================================  ===========================
wake       rising fifth, E5 -> B5                           listening
end        falling fifth, B5 -> E5                          conversation over
error      two low buzzy pulses on G3                       something is wrong
mute_on    one low blip, C5                                 microphone muted
mute_off   one high blip, C6                                microphone live again
thinking   two soft taps on G5                              waiting for the model
timer      bright falling fourth, D6 -> A5 (repeated)       a timer is ringing
reconnect  soft quick warble, F#5 A5 F#5 A5                 the connection dropped
                                                            mid-reply: the answer
                                                            comes again, whole
=========  ==============================================  ===========================

The reconnect cue replaces the fragment of a reply cut by a dropped connection (the
fragment fades out, the question is asked again on the next connection and the answer
plays from its start): quiet, short, and unlike the error buzz, because nothing is wrong
yet from the user's side.

The timer cue is the one meant to be repeated: the ringer restarts it every couple of
seconds, so the ring is a "ding-dong ... ding-dong" that is higher and brighter than the
other cues and hard to miss across a kitchen.

Cues are only ever mixed into the *output* (``CueMixer.mix_into``); they never reach the
uplink. Because the mix happens before the speaker, the echo canceller sees them in its
reference signal and removes their echo like the model's voice.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

logger = logging.getLogger(__name__)

_FULL_SCALE = 32767.0
_ATTACK_S = 0.004
_RELEASE_S = 0.025


class Cue(StrEnum):
    WAKE = "wake"
    END = "end"
    ERROR = "error"
    MUTE_ON = "mute_on"
    MUTE_OFF = "mute_off"
    THINKING = "thinking"
    TIMER = "timer"
    RECONNECT = "reconnect"


@dataclass(frozen=True)
class _Note:
    start_s: float
    duration_s: float
    freq_hz: float
    level: float  # peak fraction of full scale at cue volume 1.0
    harmonics: tuple[float, ...] = (1.0, 0.15)  # partial k+1's amplitude, fundamental = 1


_BUZZ = tuple(1.0 / k for k in range(1, 8))  # band-limited sawtooth: buzzy, fundamental strongest

# Pitches: E5 659.26, B5 987.77, G3 196.00, C5 523.25, C6 1046.50, G5 783.99, D6 1174.66,
# A5 880.00, F#5 739.99 (all well above the emulator's 440 Hz reply tone, so a test can
# tell a cue from reply audio by pitch).
_BELL = (1.0, 0.3, 0.12)  # a little more upper partial than the other cues: bell-like
_SCORES: dict[Cue, tuple[_Note, ...]] = {
    Cue.WAKE: (_Note(0.0, 0.09, 659.26, 0.7), _Note(0.085, 0.14, 987.77, 0.7)),
    Cue.END: (_Note(0.0, 0.09, 987.77, 0.7), _Note(0.085, 0.16, 659.26, 0.7)),
    Cue.ERROR: (
        _Note(0.0, 0.13, 196.00, 0.55, _BUZZ),
        _Note(0.17, 0.13, 196.00, 0.55, _BUZZ),
    ),
    Cue.MUTE_ON: (_Note(0.0, 0.08, 523.25, 0.6),),
    Cue.MUTE_OFF: (_Note(0.0, 0.08, 1046.50, 0.6),),
    Cue.THINKING: (_Note(0.0, 0.045, 783.99, 0.3), _Note(0.11, 0.045, 783.99, 0.3)),
    Cue.TIMER: (_Note(0.0, 0.16, 1174.66, 0.75, _BELL), _Note(0.19, 0.2, 880.00, 0.75, _BELL)),
    Cue.RECONNECT: tuple(
        _Note(0.05 * i, 0.035, 739.99 if i % 2 == 0 else 880.00, 0.3) for i in range(4)
    ),
}


def _envelope(length: int, sample_rate_hz: int) -> np.ndarray:
    """Raised-cosine attack and release, so every note starts and ends at zero (no clicks)."""
    env = np.ones(length, dtype=np.float64)
    attack = min(int(_ATTACK_S * sample_rate_hz), length // 2)
    release = min(int(_RELEASE_S * sample_rate_hz), length - attack)
    if attack:
        env[:attack] = 0.5 - 0.5 * np.cos(np.pi * np.arange(attack) / attack)
    if release:
        env[length - release :] = 0.5 + 0.5 * np.cos(np.pi * np.arange(1, release + 1) / release)
    return env


def render_cue(cue: Cue | str, *, sample_rate_hz: int = 24_000, volume: float = 1.0) -> np.ndarray:
    """Synthesise one cue as mono int16 at ``sample_rate_hz``; ``volume`` in 0..1 scales it."""
    score = _SCORES[Cue(cue)]
    volume = min(max(float(volume), 0.0), 1.0)
    total_s = max(note.start_s + note.duration_s for note in score)
    out = np.zeros(round(total_s * sample_rate_hz) + 1, dtype=np.float64)
    nyquist = sample_rate_hz / 2
    for note in score:
        start = round(note.start_s * sample_rate_hz)
        length = round(note.duration_s * sample_rate_hz)
        t = np.arange(length) / sample_rate_hz
        partials = [
            (k + 1, amp)
            for k, amp in enumerate(note.harmonics)
            if amp and note.freq_hz * (k + 1) < nyquist * 0.9
        ]
        wave = sum(amp * np.sin(2 * np.pi * note.freq_hz * k * t) for k, amp in partials)
        peak = float(np.max(np.abs(wave))) or 1.0
        out[start : start + length] += wave / peak * note.level * _envelope(length, sample_rate_hz)
    np.clip(out, -1.0, 1.0, out=out)
    return np.round(out * _FULL_SCALE * volume).astype(np.int16)


class CueMixer:
    """Plays one cue at a time into the speaker output; safe to call from any thread.

    ``play`` (daemon thread) *replaces* the current cue rather than queueing behind it: a cue
    reports the state *now*, so "mute on" followed quickly by "mute off" should only say "mute
    off". The replaced cue is faded out over ``fade_ms`` (mixed under the new one) so the
    switch does not click. ``mix_into`` (audio callback) adds the next samples of the cue to
    a block with int16 saturation.
    """

    def __init__(
        self, *, sample_rate_hz: int = 24_000, cue_volume: float = 0.4, fade_ms: int = 5
    ) -> None:
        if sample_rate_hz <= 0:
            raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
        self._sample_rate_hz = sample_rate_hz
        fade = max(1, sample_rate_hz * fade_ms // 1000)
        self._ramp_down = np.arange(fade - 1, -1, -1, dtype=np.float32) / fade
        self._lock = threading.Lock()
        self._volume = self._check_volume(cue_volume)
        self._rendered = self._render_all(self._volume)
        self._current: np.ndarray | None = None
        self._current_pos = 0
        self._current_name: Cue | None = None
        self._outgoing: np.ndarray | None = None  # faded remainder of a replaced cue
        self._outgoing_pos = 0
        self._unknown_logged: set[str] = set()

    @property
    def sample_rate_hz(self) -> int:
        return self._sample_rate_hz

    @property
    def cue_volume(self) -> float:
        return self._volume

    def set_volume(self, cue_volume: float) -> None:
        """Change the cue volume (0..1); applies to cues started after the call."""
        volume = self._check_volume(cue_volume)
        rendered = self._render_all(volume)
        with self._lock:
            self._volume = volume
            self._rendered = rendered

    def duration_s(self, cue: Cue | str) -> float:
        return len(self._rendered[Cue(cue)]) / self._sample_rate_hz

    def cue_samples(self, cue: Cue | str) -> np.ndarray:
        """The rendered cue at the current volume (a read-only view), e.g. for tests or a demo."""
        view = self._rendered[Cue(cue)].view()
        view.flags.writeable = False
        return view

    def play(self, cue: Cue | str) -> bool:
        """Start ``cue`` now, replacing any cue still playing; False (logged once) if unknown."""
        try:
            name = Cue(cue)
        except ValueError:
            key = str(cue)
            if key not in self._unknown_logged:
                self._unknown_logged.add(key)
                logger.warning("unknown cue %r ignored (known: %s)", key, ", ".join(Cue))
            return False
        with self._lock:
            self._fade_out_current()
            self._current = self._rendered[name]
            self._current_pos = 0
            self._current_name = name
        logger.debug("cue %s", name)
        return True

    def stop(self) -> None:
        """Stop the current cue with a short fade-out."""
        with self._lock:
            self._fade_out_current()

    @property
    def is_playing(self) -> bool:
        with self._lock:
            return self._current is not None or self._outgoing is not None

    @property
    def current(self) -> Cue | None:
        """The cue being played (not counting a replaced one fading out)."""
        with self._lock:
            return self._current_name

    def mix_into(self, block: np.ndarray) -> np.ndarray:
        """Return ``block`` plus the cue's next samples, saturated to int16.

        ``block`` must be a 1-D int16 array at this mixer's sample rate; it is not modified.
        With no cue playing the very same object is returned, so the common path costs nothing.
        """
        if block.dtype != np.int16 or block.ndim != 1:
            raise ValueError(f"mix_into needs a 1-D int16 block, got {block.dtype} {block.shape}")
        with self._lock:
            if self._current is None and self._outgoing is None:
                return block
            acc = block.astype(np.int32)
            if self._current is not None:
                self._current_pos = self._add(acc, self._current, self._current_pos)
                if self._current_pos >= len(self._current):
                    self._current = None
                    self._current_name = None
            if self._outgoing is not None:
                self._outgoing_pos = self._add(acc, self._outgoing, self._outgoing_pos)
                if self._outgoing_pos >= len(self._outgoing):
                    self._outgoing = None
        np.clip(acc, -32768, 32767, out=acc)
        return acc.astype(np.int16)

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _check_volume(value: float) -> float:
        volume = float(value)
        if not 0.0 <= volume <= 1.0:
            raise ValueError(f"cue_volume must be within 0..1, got {value!r}")
        return volume

    def _render_all(self, volume: float) -> dict[Cue, np.ndarray]:
        return {
            cue: render_cue(cue, sample_rate_hz=self._sample_rate_hz, volume=volume) for cue in Cue
        }

    @staticmethod
    def _add(acc: np.ndarray, source: np.ndarray, pos: int) -> int:
        k = min(len(acc), len(source) - pos)
        acc[:k] += source[pos : pos + k]
        return pos + k

    def _fade_out_current(self) -> None:
        """Turn the rest of the current cue into a short fade-out (lock held)."""
        if self._current is None:
            return
        rest = self._current[self._current_pos : self._current_pos + len(self._ramp_down)]
        faded = (rest.astype(np.float32) * self._ramp_down[: len(rest)]).astype(np.int32)
        # A cue replaced while an earlier one is still fading: keep both fades (each already
        # heads to zero), summed, so neither is cut off mid-ramp.
        parts = [faded]
        if self._outgoing is not None:
            parts.append(self._outgoing[self._outgoing_pos :].astype(np.int32))
        length = max(len(part) for part in parts)
        merged = np.zeros(length, dtype=np.int32)
        for part in parts:
            merged[: len(part)] += part
        np.clip(merged, -32768, 32767, out=merged)
        self._outgoing = merged.astype(np.int16) if length else None
        self._outgoing_pos = 0
        self._current = None
        self._current_pos = 0
        self._current_name = None

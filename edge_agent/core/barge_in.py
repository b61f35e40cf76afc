"""Barge-in detection: decide that the user is talking over the device's reply.

Pure logic on sample positions (no clock, no audio). Input is the VAD verdict
per frame of echo-cancelled mic audio, and wake word detections. Measured on
simulated rooms: AEC3 leaves at most a few isolated "speech" frames of residual
echo, while a real interruption gives hundreds of milliseconds of speech; so
"speech for >= 300 ms, allowing short gaps between syllables" is the rule.

Which kinds count (voice, wake word) is not decided here: `arm(rules)` takes the
conversation policy's `BargeInRules` (`edge_agent.core.policy`). The detector fires
once per reply: `arm()` re-arms it when a new reply is due; until it is armed it
detects nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.core.events import (
    BargeInDetected,
    BargeInReason,
)
from edge_agent.core.policy import NO_BARGE_IN, BargeInRules


@dataclass(frozen=True)
class BargeInConfig:
    sample_rate_hz: int = 16000
    min_speech_ms: int = 300  # speech needed within one run to interrupt
    # A non-speech stretch longer than this ends the run. AEC3 lowers the user's
    # level during double-talk and webrtcvad drops frames between words; 300 ms
    # bridges that while residual echo (isolated 30-90 ms blips seconds apart)
    # never adds up.
    max_gap_ms: int = 300
    pre_roll_ms: int = 150  # how far before the onset `BargeInDetected.sample` points

    def __post_init__(self) -> None:
        if self.min_speech_ms <= 0:
            raise ValueError("min_speech_ms must be > 0")
        if self.max_gap_ms < 0 or self.pre_roll_ms < 0:
            raise ValueError("max_gap_ms and pre_roll_ms must be >= 0")

    def samples(self, ms: int) -> int:
        return ms * self.sample_rate_hz // 1000


class BargeInDetector:
    """Accumulates speech frames into runs and fires once a run is long enough."""

    def __init__(self, config: BargeInConfig | None = None) -> None:
        self.config = config or BargeInConfig()
        self._min_speech = self.config.samples(self.config.min_speech_ms)
        self._max_gap = self.config.samples(self.config.max_gap_ms)
        self._pre_roll = self.config.samples(self.config.pre_roll_ms)
        self.fired = False
        self.rules = NO_BARGE_IN
        self._floor: int | None = None
        self.arm(NO_BARGE_IN)

    def arm(self, rules: BargeInRules, floor_sample: int | None = None) -> None:
        """Re-arm for a new reply, detecting what `rules` allow; `sample` never points
        before `floor_sample` (where the reply became due)."""
        self.rules = rules
        self.fired = False
        self._floor = floor_sample
        self._run_start: int | None = None
        self._run_speech = 0
        self._gap = 0

    def disarm(self) -> None:
        """No reply to interrupt: detect nothing until armed again."""
        self.arm(NO_BARGE_IN)

    def on_vad_frame(
        self, start_sample: int, n_samples: int, speech: bool
    ) -> BargeInDetected | None:
        """Feed one classified frame; returns the event the first time the rule holds."""
        if self.fired or not self.rules.voice:
            return None
        if speech:
            if self._run_start is None:
                self._run_start = start_sample
                self._run_speech = 0
            self._run_speech += n_samples
            self._gap = 0
            if self._run_speech >= self._min_speech:
                self.fired = True
                onset = max(0, self._run_start - self._pre_roll)
                if self._floor is not None:
                    onset = max(onset, self._floor)
                return BargeInDetected(BargeInReason.SPEECH, onset, start_sample + n_samples)
            return None
        if self._run_start is not None:
            self._gap += n_samples
            if self._gap > self._max_gap:
                self._run_start = None
                self._run_speech = 0
                self._gap = 0
        return None

    def on_wake_word(self, end_sample: int, detected_sample: int) -> BargeInDetected | None:
        """A wake word over the reply interrupts it (once), if the rules say it counts."""
        if self.fired or not self.rules.wake_word:
            return None
        self.fired = True
        return BargeInDetected(BargeInReason.WAKE_WORD, end_sample, detected_sample)

"""The emulator's stand-in for the service's server-side VAD: a plain energy detector.

Only what the turn-taking contract needs: speech starts after `min_speech_ms` of loud
frames (that is when the real service would interrupt a reply), and the turn ends after
`silence_ms` of quiet frames. Pure: positions are sample counts in the stream fed so far.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_FRAME_MS = 20


@dataclass(frozen=True)
class VadEvent:
    """`kind` is "start" or "end"; `sample` is where speech began / last speech frame ended."""

    kind: str
    sample: int


class EnergyVad:
    """Frame-RMS speech detector with start and end hangover; feed s16le bytes in any sizes."""

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        threshold_dbfs: float = -40.0,
        min_speech_ms: int = 60,
        silence_ms: int = 500,
    ) -> None:
        self.sample_rate = sample_rate
        self.frame_samples = max(1, sample_rate * _FRAME_MS // 1000)
        self._threshold = 32768.0 * 10.0 ** (threshold_dbfs / 20.0)
        self._start_frames = max(1, math.ceil(min_speech_ms / _FRAME_MS))
        self._end_frames = max(1, math.ceil(silence_ms / _FRAME_MS))
        self._pending = b""
        self._position = 0  # samples consumed into whole frames
        self.in_speech = False
        self._loud_run = 0
        self._quiet_run = 0
        self.speech_start = 0
        self.speech_end = 0

    def feed(self, pcm: bytes) -> list[VadEvent]:
        """Process more audio; returns the start/end events it completes, in order."""
        data = self._pending + pcm
        frame_bytes = self.frame_samples * 2
        usable = len(data) // frame_bytes * frame_bytes
        self._pending = data[usable:]
        events: list[VadEvent] = []
        if not usable:
            return events
        frames = np.frombuffer(data[:usable], dtype="<i2").astype(np.float64)
        frames = frames.reshape(-1, self.frame_samples)
        rms = np.sqrt(np.mean(frames * frames, axis=1))
        for loud in rms > self._threshold:
            self._position += self.frame_samples
            if not self.in_speech:
                if loud:
                    self._loud_run += 1
                    if self._loud_run >= self._start_frames:
                        self.in_speech = True
                        self._quiet_run = 0
                        self.speech_start = self._position - self._loud_run * self.frame_samples
                        self.speech_end = self._position
                        events.append(VadEvent("start", self.speech_start))
                else:
                    self._loud_run = 0
            elif loud:
                self._quiet_run = 0
                self.speech_end = self._position
            else:
                self._quiet_run += 1
                if self._quiet_run >= self._end_frames:
                    self.in_speech = False
                    self._loud_run = 0
                    events.append(VadEvent("end", self.speech_end))
        return events

    def speech_seconds(self) -> float:
        """Length of the current (or last) speech segment."""
        return max(0, self.speech_end - self.speech_start) / self.sample_rate

    def reset(self) -> None:
        """Forget the current segment (after audioStreamEnd); keeps the stream position."""
        self.in_speech = False
        self._loud_run = 0
        self._quiet_run = 0
        self._pending = b""

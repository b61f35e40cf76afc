"""VAD gate: turns a mic stream into utterances (speech start/end + the audio to uplink).

Pure logic: no I/O, no clock. Time is the sample position in the 16 kHz capture
stream, so every decision is reproducible from the audio alone. Frames arrive
already cut and classified (the ears frame the cleaned capture stream and run
webrtcvad once per frame, sharing the verdict with barge-in detection).

Why a gate: the uplink should carry the user's speech, not minutes of room
noise. Three details keep it from clipping words:
- a pre-roll ring: when speech opens the gate, the frames just before the
  onset go up too, so the first (soft) syllable is never cut;
- a start requirement (consecutive speech frames) so a click does not open it;
- an end hangover (silence time) so pauses between words do not close it.
A maximum utterance length stops a TV or a stuck classifier from streaming
forever; after such a cut the gate re-arms only after `speech_end_ms` of
silence, so continuous noise does not produce a chain of utterances.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from edge_agent.core.events import (
    SpeechEnded,
    SpeechEndReason,
    SpeechStarted,
    UplinkAudio,
)

SUPPORTED_FRAME_MS = (10, 20, 30)


GateEvent = SpeechStarted | SpeechEnded | UplinkAudio


@dataclass(frozen=True)
class VadGateConfig:
    """Gate timing. Durations round up to whole frames."""

    sample_rate_hz: int = 16000
    frame_ms: int = 30
    pre_roll_ms: int = 300
    speech_start_ms: int = 90
    speech_end_ms: int = 700
    max_utterance_s: float = 30.0

    def __post_init__(self) -> None:
        if self.frame_ms not in SUPPORTED_FRAME_MS:
            raise ValueError(f"frame_ms must be one of {SUPPORTED_FRAME_MS}, got {self.frame_ms}")
        if self.sample_rate_hz <= 0 or self.sample_rate_hz % 100:
            raise ValueError(
                f"sample_rate_hz must be a positive multiple of 100: {self.sample_rate_hz}"
            )
        for name in ("pre_roll_ms", "speech_start_ms", "speech_end_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_utterance_s <= 0:
            raise ValueError("max_utterance_s must be > 0")

    @property
    def frame_samples(self) -> int:
        return self.sample_rate_hz * self.frame_ms // 1000

    def _frames(self, ms: float) -> int:
        return -(-round(ms * self.sample_rate_hz / 1000) // self.frame_samples)

    @property
    def pre_roll_frames(self) -> int:
        return self._frames(self.pre_roll_ms)

    @property
    def start_frames(self) -> int:
        """Consecutive speech frames that open the gate (at least one)."""
        return max(1, self._frames(self.speech_start_ms))

    @property
    def end_frames(self) -> int:
        """Consecutive non-speech frames that close it (at least one)."""
        return max(1, self._frames(self.speech_end_ms))

    @property
    def max_utterance_samples(self) -> int:
        return round(self.max_utterance_s * self.sample_rate_hz)


class VadGate:
    """Turns classified frames into utterance events plus uplink audio.

    Feed frames in stream order with `process_frame(frame, start_sample, speech)`;
    events come out in stream order, uplink audio coalesced per call.
    """

    def __init__(
        self,
        config: VadGateConfig | None = None,
        *,
        max_start_frames: int | None = None,
        max_lead_samples: int = 0,
    ) -> None:
        """max_start_frames: the largest `start_frames` override `process_frame` will get
        (sizes the pre-roll ring); defaults to the config's own start requirement.
        max_lead_samples: the largest `lead_samples` that `reset` will get."""
        self.config = config or VadGateConfig()
        self._max_start_frames = max(self.config.start_frames, max_start_frames or 0)
        self._max_lead_samples = max_lead_samples
        self.bytes_seen = 0
        self.bytes_passed = 0
        self.utterances = 0
        self._frame_samples = self.config.frame_samples
        # Pre-roll ring: the onset run itself plus `pre_roll` (or the longest lead) before it.
        lead_frames = -(-max_lead_samples // self._frame_samples)
        self._ring: deque[tuple[int, np.ndarray]] = deque(
            maxlen=max(self.config.pre_roll_frames, lead_frames) + self._max_start_frames
        )
        self.reset()

    # -- public API -------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """True while an utterance is in progress (audio is being uplinked)."""
        return self._open

    def reset(self, floor_sample: int | None = None, lead_samples: int = 0) -> None:
        """Close silently and forget the pre-roll; ignore audio before `floor_sample`.

        Used when the owner starts listening at a given point (e.g. right after
        a wake phrase): nothing before that point may be uplinked.

        lead_samples: for the next utterance only, send up to this much audio before
        its onset run (but not before the floor) instead of the pre-roll. Right after
        a wake word the words may have started before the run that opens the gate: a
        wake cue playing over them hides some frames from the VAD (echo cancellation
        that has not converged gates them), so the run that counts starts late.
        """
        if lead_samples > self._max_lead_samples:
            raise ValueError(f"lead of {lead_samples} samples exceeds the gate's maximum")
        self._open = False
        self._armed = True
        self._floor = floor_sample
        self._lead = lead_samples
        self._ring.clear()
        self._run_frames = 0  # consecutive speech frames while closed
        self._run_start = 0
        self._silence_frames = 0  # consecutive non-speech frames (open, or disarmed)
        self._utterance_start = 0
        self._last_speech_end = 0
        self._sent_until: int | None = None

    def process_frame(
        self,
        frame: np.ndarray,
        start_sample: int,
        speech: bool,
        *,
        start_frames: int | None = None,
    ) -> list[GateEvent]:
        """Gate one already-classified frame of `config.frame_samples` samples.

        start_frames: a stricter opening requirement for this frame (e.g. while
        the device itself is playing, where residual echo gives short false
        "speech" runs); capped at `max_start_frames`.
        """
        frame = np.asarray(frame, dtype=np.int16).reshape(-1)
        if frame.size != self._frame_samples:
            raise ValueError(f"frame must have {self._frame_samples} samples, got {frame.size}")
        out = _EventSink()
        need = self.config.start_frames
        if start_frames is not None:
            need = min(max(need, start_frames), self._max_start_frames)
        self._step(frame, start_sample, speech, out, need)
        return out.finish()

    # -- internals --------------------------------------------------------

    def _step(
        self, frame: np.ndarray, start: int, speech: bool, out: _EventSink, start_frames: int
    ) -> None:
        fs = frame.size
        end = start + fs
        self.bytes_seen += 2 * fs
        if self._floor is not None and start < self._floor:
            return
        if self._open:
            self._emit_audio(frame, start, out)
            if speech:
                self._silence_frames = 0
                self._last_speech_end = end
            else:
                self._silence_frames += 1
            if self._silence_frames >= self.config.end_frames:
                self._close(self._last_speech_end, SpeechEndReason.SILENCE, out)
            elif end - self._utterance_start >= self.config.max_utterance_samples:
                self._close(end, SpeechEndReason.MAX_LENGTH, out)
                self._armed = False
            return

        self._ring.append((start, frame.copy()))
        if not self._armed:
            # After a MAX_LENGTH cut: wait for real silence before listening again.
            self._silence_frames = 0 if speech else self._silence_frames + 1
            if self._silence_frames >= self.config.end_frames:
                self._armed = True
                self._silence_frames = 0
            return
        if not speech:
            self._run_frames = 0
            return
        if self._run_frames == 0:
            self._run_start = start
        self._run_frames += 1
        if self._run_frames >= start_frames:
            self._open_gate(end, out)

    def _open_gate(self, end: int, out: _EventSink) -> None:
        self._open = True
        self.utterances += 1
        self._utterance_start = self._run_start
        self._last_speech_end = end
        self._silence_frames = 0
        self._run_frames = 0
        out.add(SpeechStarted(self._run_start))
        lead = max(self._lead, self.config.pre_roll_frames * self._frame_samples)
        self._lead = 0  # the next utterance of this window has the plain pre-roll
        earliest = self._run_start - lead
        for f_start, f in self._ring:
            if f_start < earliest:
                continue
            if self._sent_until is not None and f_start < self._sent_until:
                continue
            self._emit_audio(f, f_start, out)
        self._ring.clear()

    def _close(self, sample: int, reason: SpeechEndReason, out: _EventSink) -> None:
        self._open = False
        self._silence_frames = 0
        self._run_frames = 0
        self._ring.clear()
        out.flush_audio()
        out.add(SpeechEnded(sample, reason))

    def _emit_audio(self, frame: np.ndarray, start: int, out: _EventSink) -> None:
        self.bytes_passed += 2 * frame.size
        self._sent_until = start + frame.size
        out.audio(frame, start)


class _EventSink:
    """Collects events, merging contiguous uplink frames into one UplinkAudio."""

    def __init__(self) -> None:
        self.events: list[GateEvent] = []
        self._chunks: list[bytes] = []
        self._chunk_start = 0
        self._chunk_end = 0

    def add(self, event: GateEvent) -> None:
        self.flush_audio()
        self.events.append(event)

    def audio(self, frame: np.ndarray, start: int) -> None:
        if self._chunks and start != self._chunk_end:
            self.flush_audio()
        if not self._chunks:
            self._chunk_start = start
        self._chunks.append(frame.astype("<i2", copy=False).tobytes())
        self._chunk_end = start + frame.size

    def flush_audio(self) -> None:
        if self._chunks:
            self.events.append(UplinkAudio(b"".join(self._chunks), self._chunk_start))
            self._chunks = []

    def finish(self) -> list[GateEvent]:
        self.flush_audio()
        return self.events

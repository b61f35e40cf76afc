"""webrtcvad speech classifier (the `is_speech` the VAD gate and barge-in use).

webrtcvad (from the `webrtcvad-wheels` distribution; plain `webrtcvad` fails to
import with current setuptools) costs about 0.1 ms CPU per second of audio,
so the pipeline runs it on every frame, all the time: the instance then always
knows the current background noise. A *fresh* instance flags the first few
frames of non-silent noise as speech (measured: 3-4 frames of 30 ms in every
mode, on -60 dBFS noise), which would open the VAD gate on nothing. So the
adapter classifies the first `warmup_ms` (150 ms) of audio to let webrtcvad
adapt but reports them as non-speech, and the pipeline keeps one instance fed
continuously for the whole run.

Mode 0 is the least aggressive (most frames called speech), 3 the most.
"""

from __future__ import annotations

import logging

import numpy as np
import webrtcvad

logger = logging.getLogger(__name__)

VALID_FRAME_MS = (10, 20, 30)
VALID_RATES_HZ = (8000, 16000, 32000, 48000)


class WebRtcVad:
    """`is_speech(frame)` for int16 mono frames of 10, 20 or 30 ms."""

    def __init__(self, mode: int = 2, sample_rate_hz: int = 16000, warmup_ms: int = 150) -> None:
        if mode not in (0, 1, 2, 3):
            raise ValueError(f"webrtcvad mode must be 0..3, got {mode}")
        if sample_rate_hz not in VALID_RATES_HZ:
            raise ValueError(f"webrtcvad needs a rate in {VALID_RATES_HZ}, got {sample_rate_hz}")
        self.mode = mode
        self.sample_rate_hz = sample_rate_hz
        self._valid_sizes = {sample_rate_hz * ms // 1000 for ms in VALID_FRAME_MS}
        self._vad = webrtcvad.Vad(mode)
        self._warmup_left = warmup_ms * sample_rate_hz // 1000
        self.frames = 0
        self.speech_frames = 0
        self._bad_frames = 0

    def is_speech(self, frame: np.ndarray | bytes) -> bool:
        """Classify one frame; a frame of the wrong size is logged once and called silence."""
        if isinstance(frame, np.ndarray):
            n = frame.size
            data = frame.astype("<i2", copy=False).tobytes()
        else:
            data = bytes(frame)
            n = len(data) // 2
        if n not in self._valid_sizes:
            self._bad_frames += 1
            if self._bad_frames == 1:
                logger.warning(
                    "webrtcvad: frame of %d samples is not 10/20/30 ms; treated as silence", n
                )
            return False
        self.frames += 1
        speech = bool(self._vad.is_speech(data, self.sample_rate_hz))
        if self._warmup_left > 0:
            self._warmup_left -= n
            return False
        if speech:
            self.speech_frames += 1
        return speech

    __call__ = is_speech

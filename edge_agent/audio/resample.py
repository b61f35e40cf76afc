"""Streaming int16 mono resampler for the audio callbacks (soxr).

Why the variable-rate engine (``vr=True``): soxr's default fixed-rate engine processes in
FFT blocks and returns nothing for several 10 ms chunks, then ~30 ms at once (measured:
``[0, 0, 0, 490, 0, 0, 489, ...]`` for 480-sample chunks at 48 kHz -> 16 kHz, HQ). In a
sound card callback that means either waiting for output or pulling far ahead. The
variable-rate engine, run at a fixed ratio, returns output for every chunk (after the
first), has ~2 ms of delay, and measured the same here: 86 dB SNR on a 440 Hz tone at
48k -> 16k, a 10 kHz tone rejected to -90 dB (no aliasing), ~2 ms CPU per second of audio.

The state carries across calls, so chunk edges never click. Output counts still vary by a
sample or so from call to call: callers accumulate into fixed-size blocks.

Why float32 inside: with int16 output soxr adds TPDF dither, so digital silence comes out
as +-1 LSB noise. The echo reference must be exactly zero while nothing plays (the echo
canceller is bypassed on a silent reference), so samples go through soxr as float32 and
are rounded and clipped back to int16 here: silence in, silence out.
"""

from __future__ import annotations

import numpy as np
import soxr


def _to_int16(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    return np.clip(np.rint(y), -32768, 32767).astype(np.int16)


class StreamResampler:
    """int16 in, int16 out, one channel, state kept between chunks; passthrough if equal."""

    def __init__(self, in_rate_hz: int, out_rate_hz: int, quality: str = "HQ") -> None:
        if in_rate_hz <= 0 or out_rate_hz <= 0:
            raise ValueError(f"bad rates {in_rate_hz} -> {out_rate_hz}")
        self.in_rate_hz = int(in_rate_hz)
        self.out_rate_hz = int(out_rate_hz)
        self.quality = quality
        self.passthrough = self.in_rate_hz == self.out_rate_hz
        self.in_samples = 0
        self.out_samples = 0
        self._stream: soxr.ResampleStream | None = None
        if not self.passthrough:
            self._stream = soxr.ResampleStream(
                self.in_rate_hz, self.out_rate_hz, 1, dtype="float32", quality=quality, vr=True
            )

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Resample the next chunk; returns whatever output is ready (may be empty)."""
        x = np.ascontiguousarray(samples, dtype=np.int16).reshape(-1)
        self.in_samples += len(x)
        if self._stream is None:
            out = x.copy()
        else:
            out = _to_int16(self._stream.resample_chunk(x.astype(np.float32)))
        self.out_samples += len(out)
        return out

    def flush(self) -> np.ndarray:
        """End of stream: the samples still inside the filter (a new stream needs a new object;
        a device reopen builds new resamplers)."""
        if self._stream is None:
            return np.zeros(0, dtype=np.int16)
        out = _to_int16(self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
        self.out_samples += len(out)
        return out


def resample_all(samples: np.ndarray, in_rate_hz: int, out_rate_hz: int) -> np.ndarray:
    """One-shot helper (tests, cues): the whole signal through a fresh stream, flushed."""
    rs = StreamResampler(in_rate_hz, out_rate_hz)
    return np.concatenate([rs.process(samples), rs.flush()])

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

Why silence is skipped: the speaker side of a full-duplex stream resamples digital silence
all day long (the output 24 kHz -> device rate, and the echo reference device rate -> 16 kHz),
and the variable-rate engine costs about 30 us per 10 ms chunk whatever the samples. Once a
stream has taken ``QUIET_AFTER_MS`` of zeros in a row, each answered with zeros in exactly
``len * out_rate / in_rate`` samples, its filter holds nothing but zeros and its phase repeats
every chunk; further silent chunks are answered with that many zeros without calling soxr.
The filter state is then exactly what it would be after resampling them (zeros), so the first
non-silent chunk continues the stream sample for sample as if soxr had seen every zero
(tests/test_audio_engine.py compares both, bit for bit). Only rate pairs whose greatest
common divisor is a multiple of 8 kHz skip (16/24/32/48/96 kHz): at 44.1 kHz the chunks
still map to whole numbers of samples, but soxr's phase is not exactly periodic there
(measured: the continued stream differs by 1 LSB now and then), so those never skip.
"""

from __future__ import annotations

import math

import numpy as np
import soxr

QUIET_AFTER_MS = 100  # of zeros through the filter before silence is skipped (filter: ~2 ms)


def _to_int16(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    if not y.flags.writeable:
        y = y.copy()
    # In place, with ufuncs: np.clip's Python wrapper costs more than the work on 160 samples.
    np.rint(y, out=y)
    np.minimum(y, 32767, out=y)
    np.maximum(y, -32768, out=y)
    return y.astype(np.int16)


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
        self.skipped_samples = 0  # silent input answered without soxr (see the module doc)
        self._quiet_run = 0  # silent input samples in a row answered with exact silence
        self._quiet_after = self.in_rate_hz * QUIET_AFTER_MS // 1000
        self._can_skip = math.gcd(self.in_rate_hz, self.out_rate_hz) % 8000 == 0
        self._stream: soxr.ResampleStream | None = None
        if not self.passthrough:
            self._stream = soxr.ResampleStream(
                self.in_rate_hz, self.out_rate_hz, 1, dtype="float32", quality=quality, vr=True
            )

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Resample the next chunk; returns whatever output is ready (may be empty)."""
        x = np.ascontiguousarray(samples, dtype=np.int16).reshape(-1)
        n = x.size
        if self._stream is None:
            out = x.copy()
        else:
            silent = self._can_skip and not np.count_nonzero(x)
            if silent:
                m = self.skip_silence(n)
                if m is not None:
                    return np.zeros(m, dtype=np.int16)
            out = _to_int16(self._stream.resample_chunk(x.astype(np.float32)))
            exact = out.size * self.in_rate_hz == n * self.out_rate_hz
            quiet = silent and exact and not np.count_nonzero(out)
            self._quiet_run = self._quiet_run + n if quiet else 0
        self.in_samples += n
        self.out_samples += out.size
        return out

    def skip_silence(self, n: int) -> int | None:
        """Take ``n`` samples of digital silence without soxr if the stream is quiet: the
        number of output samples (all zero), or None when they must go through
        :meth:`process` (not quiet, a rate pair that never skips, or no whole number)."""
        if self._stream is None or not self._can_skip or self._quiet_run < self._quiet_after:
            return None
        m, rem = divmod(n * self.out_rate_hz, self.in_rate_hz)
        if rem:
            return None
        self.in_samples += n
        self.skipped_samples += n
        self.out_samples += m
        return m

    @property
    def quiet(self) -> bool:
        """True while silent input is answered without soxr (the stream is idle)."""
        return self._stream is not None and self._quiet_run >= self._quiet_after

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

"""Streaming int16 mono resampler for the audio callbacks (soxr; whole-number downsampling
ratios by a windowed-sinc FIR, see the end of this docstring).

Why the variable-rate engine (``vr=True``): soxr's default fixed-rate engine processes in
FFT blocks and returns nothing for several 10 ms chunks, then ~30 ms at once (measured:
``[0, 0, 0, 490, 0, 0, 489, ...]`` for 480-sample chunks at 48 kHz -> 16 kHz, HQ). In a
sound card callback that means either waiting for output or pulling far ahead. The
variable-rate engine, run at a fixed ratio, returns output for every chunk (after the
first) and measured the same here: 86 dB SNR on a 440 Hz tone at 48k -> 16k, a 10 kHz tone
rejected to -90 dB (no aliasing). Its output lags its input by 10 ms (24k -> 48k) to 13.6 ms
(44.1k -> 16k), measured with an impulse.

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

Why whole-number downsampling (48 -> 16 kHz, also 32 and 96 kHz) does not use soxr: the mic
is resampled every second of the device's life, and soxr's variable-rate engine, the one
with output for every chunk, cost 0.31 % of a core here for 48 -> 16 kHz in a tight loop
and 0.56 % inside the sound card callback (the largest share of the idle callback's work).
A ratio of 3 needs no rate interpolation, only a low-pass filter and every third sample:
one linear-phase FIR (Kaiser-windowed sinc, 100 taps per unit of the ratio, cut at 7.5 kHz)
run polyphase through numpy's convolution, with output for every chunk and soxr's way with
delay (output k is centred on input ``3 k``; the filter's half length is taken off the
start and given back by ``flush``). Measured: flat within 0.05 dB to 7.1 kHz, at least 91 dB
down from 8 kHz up (soxr HQ: 86 dB SNR on a 440 Hz tone, -90 dB at 10 kHz); the output lags
the input by 3.1 ms (soxr's engine: 12.5 ms), so the mic reaches the ears 9 ms sooner; in
a tight loop 51 us per 80 ms chunk (soxr 196 us) and 14 us per 10 ms chunk (soxr 28 us).
Mic and echo reference go through the same filter, so they stay aligned with each other.
Other ratios (44.1 kHz, and 24 kHz up to the device) keep soxr.
"""

from __future__ import annotations

import math

import numpy as np
import soxr

QUIET_AFTER_MS = 100  # of zeros through the filter before silence is skipped (> its memory)
FIR_TAPS_PER_RATIO = 100  # decimator length: 100 * ratio + 1 taps (301 for 48 -> 16 kHz)
FIR_CUTOFF_HZ = 7_500.0  # at 16 kHz out; for other output rates scaled (see fir_lowpass)
FIR_KAISER_BETA = 9.0  # about 90 dB of stopband


def _to_int16(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    if not y.flags.writeable:
        y = y.copy()
    # In place, with ufuncs: np.clip's Python wrapper costs more than the work on 160 samples.
    np.rint(y, out=y)
    np.minimum(y, 32767, out=y)
    np.maximum(y, -32768, out=y)
    return y.astype(np.int16)


def fir_lowpass(factor: int, out_rate_hz: int) -> np.ndarray:
    """The decimator's filter: linear phase, unity gain at DC, float32."""
    taps = FIR_TAPS_PER_RATIO * factor + 1
    cutoff = FIR_CUTOFF_HZ * out_rate_hz / 16_000 / (out_rate_hz * factor)  # cycles/sample
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, FIR_KAISER_BETA)
    return (h / h.sum()).astype(np.float32)


class FirDecimator:
    """Whole-number ratio downsampling: low-pass FIR, then every ``factor``-th sample.

    Output sample k is the filter centred on input sample ``factor * k`` (the filter's
    delay is taken off, as soxr does), so it is ready once input reaches
    ``factor * k + delay``; ``resample_chunk(..., last=True)`` gives the rest. Same call
    shape as ``soxr.ResampleStream.resample_chunk`` (float32 in, float32 out).

    Polyphase: only the kept outputs are computed. With the taps split by phase,
    ``g_r[i] = h[factor * i + r]``, and the input likewise, ``u_r[m] = x[factor * m +
    delay - r]``, each output is ``sum_r (g_r * u_r)[k]``: ``factor`` short convolutions
    instead of one long one and a stride.
    """

    def __init__(self, factor: int, out_rate_hz: int) -> None:
        if factor < 2:
            raise ValueError(f"decimation factor must be >= 2, got {factor}")
        self.factor = factor
        h = fir_lowpass(factor, out_rate_hz)
        self._delay = (len(h) - 1) // 2  # a multiple of factor
        self._span = -(-len(h) // factor)  # taps per phase
        padded = np.zeros(self._span * factor, dtype=np.float32)
        padded[: len(h)] = h
        self._phases = [padded[r::factor].copy() for r in range(factor)]
        # Input not yet used up: from the first sample the next output needs (samples
        # before input 0 are zeros), to the newest.
        self._next_out = 0
        self._pending = np.zeros(-self._first_needed(0), dtype=np.float32)
        self._next_in = 0  # input index of the next sample given

    def _first_needed(self, k: int) -> int:
        """The oldest input sample output k reads."""
        return self.factor * (k - self._span + 1) + self._delay - (self.factor - 1)

    def resample_chunk(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if last:
            x = np.concatenate((x, np.zeros(self._delay, dtype=np.float32)))
        self._next_in += len(x)
        buf = np.concatenate((self._pending, x)) if len(self._pending) else x
        # Outputs whose newest input sample (centre + delay) has arrived.
        end = (self._next_in - 1 - self._delay) // self.factor + 1
        k0, factor = self._next_out, self.factor
        if end <= k0:
            self._pending = buf.copy()  # never a view of the caller's array
            return np.zeros(0, dtype=np.float32)
        count = end - k0
        seg = buf[: factor * (count + self._span - 1)]
        out = np.zeros(count, dtype=np.float32)
        for r, taps in enumerate(self._phases):
            out += np.convolve(seg[factor - 1 - r :: factor], taps, "valid")
        self._pending = buf[factor * count :].copy()  # a few ms; never the caller's array
        self._next_out = end
        return out

    def skip_zeros(self, n: int) -> None:
        """``n`` zeros (a multiple of ``factor``) went by while everything pending was
        zeros: it still is, and the outputs they made (zeros) are taken as given."""
        self._next_in += n
        self._next_out += n // self.factor


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
        self._stream: soxr.ResampleStream | FirDecimator | None = None
        if not self.passthrough and self.in_rate_hz % self.out_rate_hz == 0:
            self._stream = FirDecimator(self.in_rate_hz // self.out_rate_hz, self.out_rate_hz)
            self._can_skip = True  # zeros in, zeros out, and whole chunks map exactly
        elif not self.passthrough:
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
        if isinstance(self._stream, FirDecimator):
            self._stream.skip_zeros(n)
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

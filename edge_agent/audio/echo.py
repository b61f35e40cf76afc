"""Acoustic echo cancellation (WebRTC AEC3 via `pywebrtc-audio`) and the no-AEC policy.

Why: the speaker leaks into the mic. Without AEC the device hears its own
reply: the echo of "hey jarvis" peaks at 0.99-1.00 on the wake model and
webrtcvad calls the echo speech. With AEC3 (measured in tests/test_echo.py's
three simulated rooms) the same echo peaks at 0.01-0.04, ERLE is 36-65 dB,
and the wake word and VAD keep running during playback, so the user can
interrupt by voice.

`Aec3EchoCanceller.process(mic, ref)` takes the mic block and the reference
block aligned with it (what the output device was given in the same
full-duplex callback, resampled to 16 kHz), 10 ms (160 samples) at a time. One
canceller lives for the whole run: its adaptive filter and delay estimate
carry over from one reply to the next.

Idle bypass: while the reference has been silent for `idle_bypass_ms` (1 s by
default) there is nothing to cancel, so the mic passes through untouched and
the always-on wake-word path costs nothing extra. The first non-silent
reference block switches processing back on in that same block. The run
starts with one such second of processing: an AEC3 whose very first call is
the start of a reply removes 10-20 dB less echo for about 2 s (measured),
while a canceller that was bypassed for minutes after warming up loses
nothing.

Noise fill (`NoiseFill`): AEC3's suppressor gates *everything* during echo,
the room noise included (its output drops to near digital silence), and the
noise comes back when the echo stops. webrtcvad adapts to the silence and then
calls the returning noise "speech" for seconds (measured: false barge-ins in
15 of 16 simulated replies and a VAD gate that opened after every reply).
So the VAD (not the uplink, not the wake word) gets the cleaned audio with
gated blocks replaced by recorded room noise, keeping its noise model steady.

AEC disabled (config) -> `PlaybackGuard`: the pipeline cannot tell the user
from the echo, so while the reference is non-silent, plus a tail for room
reverb and device latency, the wake word hears digital silence and the VAD
reports non-speech. Consequence (stated in the docs): without AEC, voice
barge-in is impossible while the device talks; only the button interrupts.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

BLOCK_SAMPLES = 160  # AEC3 works on 10 ms blocks at 16 kHz
# A reference block whose peak is at or below this (-60 dBFS) counts as silence:
# its echo would be far below the room noise. Absorbs dither from output stacks.
REF_SILENCE_PEAK = 32


def reference_active(ref: np.ndarray | None) -> bool:
    """True when the reference block carries audible playback."""
    if ref is None or ref.size == 0:
        return False
    return int(np.max(np.abs(ref.astype(np.int32)))) > REF_SILENCE_PEAK


class EchoCanceller(Protocol):
    """What the pipeline needs from an echo canceller."""

    def process(self, mic: np.ndarray, ref: np.ndarray | None) -> np.ndarray: ...


class _AecEngine(Protocol):
    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray: ...


class Aec3EchoCanceller:
    """AEC3 with idle bypass; blocks must be multiples of 10 ms at 16 kHz."""

    def __init__(
        self,
        engine: _AecEngine,
        *,
        sample_rate_hz: int = 16000,
        idle_bypass_ms: int = 1000,
    ) -> None:
        if sample_rate_hz != 16000:
            raise ValueError("Aec3EchoCanceller is set up for 16 kHz capture")
        self._engine = engine
        self._block = sample_rate_hz // 100
        self._idle_bypass_samples = idle_bypass_ms * sample_rate_hz // 1000
        # Start *processing*: AEC3 whose first call coincides with the start of
        # playback removes 10-20 dB less echo for its first ~2 s (measured); half a
        # second of silent warm-up is enough. So the first `idle_bypass_ms` of the
        # run go through the engine, then the idle bypass takes over.
        self._quiet_samples = 0
        self.processed_blocks = 0
        self.bypassed_blocks = 0
        self._bad_blocks = 0

    @classmethod
    def create(
        cls, *, sample_rate_hz: int = 16000, stream_delay_ms: int = 0, idle_bypass_ms: int = 1000
    ) -> Aec3EchoCanceller:
        """Build the real AEC3 engine (one per run)."""
        from pywebrtc_audio import EchoCanceller as _PyWebrtcEchoCanceller

        engine = _PyWebrtcEchoCanceller(
            sample_rate=sample_rate_hz, num_channels=1, stream_delay_ms=stream_delay_ms
        )
        return cls(engine, sample_rate_hz=sample_rate_hz, idle_bypass_ms=idle_bypass_ms)

    @property
    def bypassed(self) -> bool:
        """True while the canceller is idle (reference silent for the bypass time)."""
        return self._quiet_samples >= self._idle_bypass_samples

    def process(self, mic: np.ndarray, ref: np.ndarray | None) -> np.ndarray:
        """Return the echo-cancelled mic block (int16, same length)."""
        n = mic.size
        if ref is not None and ref.size != n:
            self._log_bad("reference block has %d samples, mic %d; using silence", ref.size, n)
            ref = None
        if reference_active(ref):
            self._quiet_samples = 0
        else:
            self._quiet_samples = min(self._quiet_samples + n, self._idle_bypass_samples)
            if self.bypassed:
                self.bypassed_blocks += 1
                return mic
        if n % self._block:
            self._log_bad("mic block of %d samples is not a multiple of 10 ms; not cancelled", n)
            return mic
        far = ref if ref is not None else np.zeros(n, dtype=np.int16)
        mic16 = np.ascontiguousarray(mic, dtype=np.int16)
        far16 = np.ascontiguousarray(far, dtype=np.int16)
        self.processed_blocks += 1
        if n == self._block:
            return np.asarray(self._engine.process(mic16, far16), dtype=np.int16)
        out = np.empty(n, dtype=np.int16)
        for i in range(0, n, self._block):
            out[i : i + self._block] = self._engine.process(
                mic16[i : i + self._block], far16[i : i + self._block]
            )
        return out

    def _log_bad(self, msg: str, *args: object) -> None:
        self._bad_blocks += 1
        if self._bad_blocks == 1:
            logger.warning("AEC: " + msg, *args)


class PlaybackGuard:
    """The AEC-disabled policy: report "playback audible" while the reference plays + a tail.

    The tail covers output latency plus room reverb (the echo keeps arriving
    after the last reference sample). 500 ms covers 200 ms of device latency
    and an RT60 of 300 ms.
    """

    def __init__(self, *, sample_rate_hz: int = 16000, tail_ms: int = 500) -> None:
        self._tail = tail_ms * sample_rate_hz // 1000
        self._active_until: int | None = None
        self.guarded_samples = 0

    def update(self, ref: np.ndarray | None, start_sample: int, n_samples: int) -> bool:
        """Feed the reference block at `start_sample`; True if this block must be muted."""
        end = start_sample + n_samples
        if reference_active(ref):
            self._active_until = end + self._tail
        active = self._active_until is not None and start_sample < self._active_until
        if active:
            self.guarded_samples += n_samples
        return active


def block_energy_db(block: np.ndarray) -> float:
    """Mean power of an int16 block in dB (0 dB = digital silence, ~90 dB = full scale)."""
    x = block.astype(np.float64)
    return 10.0 * float(np.log10(np.dot(x, x) / max(1, x.size) + 1.0))


class NoiseFill:
    """Replaces AEC-gated (near-silent) blocks with recorded room noise, for the VAD only.

    Learns from the raw mic while nothing has played for `learn_after_ms`: the
    noise floor is the minimum block energy over the last `windows` windows of
    `window_ms`, and blocks within `bank_margin_db` of it go into a bank of
    `bank_ms` of noise (a bounded ring: oldest dropped). A cleaned block more
    than `fill_below_db` under the floor is replaced by the next bank block.
    Until something has been learned the audio passes unchanged.
    """

    def __init__(
        self,
        *,
        sample_rate_hz: int = 16000,
        learn_after_ms: int = 500,
        window_ms: int = 1000,
        windows: int = 3,
        bank_ms: int = 1000,
        bank_margin_db: float = 4.0,
        fill_below_db: float = 6.0,
    ) -> None:
        self._learn_after = learn_after_ms * sample_rate_hz // 1000
        self._window = window_ms * sample_rate_hz // 1000
        self._minima: deque[float] = deque(maxlen=windows)
        self._cur_min: float | None = None
        self._cur_samples = 0
        self._bank: deque[np.ndarray] = deque(maxlen=max(1, bank_ms // 10))
        self._bank_margin = bank_margin_db
        self._fill_below = fill_below_db
        self._since_ref = self._learn_after  # nothing has played yet
        self._next = 0
        self.floor_db: float | None = None
        self.filled_blocks = 0

    def process(self, mic: np.ndarray, cleaned: np.ndarray, ref_active: bool) -> np.ndarray:
        """Return the block the VAD should see."""
        if ref_active:
            self._since_ref = 0
        else:
            self._since_ref = min(self._since_ref + mic.size, self._learn_after)
            if self._since_ref >= self._learn_after:
                self._learn(mic)
        if cleaned is mic or self.floor_db is None or not self._bank:
            return cleaned  # AEC bypassed (nothing gated), or nothing learned yet
        if block_energy_db(cleaned) >= self.floor_db - self._fill_below:
            return cleaned
        self._next = (self._next + 1) % len(self._bank)
        noise = self._bank[self._next]
        if noise.size != cleaned.size:
            noise = np.resize(noise, cleaned.size)
        self.filled_blocks += 1
        return noise

    def _learn(self, mic: np.ndarray) -> None:
        energy = block_energy_db(mic)
        self._cur_min = energy if self._cur_min is None else min(self._cur_min, energy)
        self._cur_samples += mic.size
        if self._cur_samples >= self._window:
            self._minima.append(self._cur_min)
            self._cur_min = None
            self._cur_samples = 0
        candidates = list(self._minima)
        if self._cur_min is not None:
            candidates.append(self._cur_min)
        self.floor_db = min(candidates)
        if energy <= self.floor_db + self._bank_margin:
            self._bank.append(mic.copy())

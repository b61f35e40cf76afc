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
from dataclasses import dataclass
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

BLOCK_SAMPLES = 160  # AEC3 works on 10 ms blocks at 16 kHz
# A reference block whose peak is at or below this (-60 dBFS) counts as silence:
# its echo would be far below the room noise. Absorbs dither from output stacks.
REF_SILENCE_PEAK = 32


def reference_active(ref: np.ndarray | None) -> bool:
    """True when the reference block carries audible playback."""
    if ref is None or ref.size == 0 or not ref.any():  # any(): the idle case, cheaply
        return False
    return int(np.max(np.abs(ref.astype(np.int32)))) > REF_SILENCE_PEAK


# AEC3 (as pywebrtc-audio runs it) hands back each 10 ms block 128 samples (8 ms) late:
# its internal framing holds that much. Measured; tests/test_echo.py pins it.
AEC3_LATENCY_SAMPLES = 128


@dataclass(frozen=True)
class EchoOutput:
    """One block out of the canceller; `cleaned` and `raw` cover the same samples.

    Both lag the mic block that went in by the canceller's `latency_samples`, always,
    whether AEC3 ran or was bypassed, so switching it on or off never inserts, drops or
    shifts a sample: block `k` of the output starts at capture sample
    `sample_pos - latency_samples`.

    settled: AEC3 has cancelled at least `settle_ms` of audible playback since it was
    last switched on. Until then its suppressor may gate the user's speech even where
    no echo has reached the mic yet (measured: a wake cue over a one-breath question cut
    up to 40 of its 10 ms frames by 5-50 dB, and even with no echo at all AEC3 alters a
    few frames by more than 1 dB). So the uplink takes `raw` until then: a quiet cue
    under the first words is better than lost words. A reply settles it in half a
    second; the uplink then gets the reply's echo removed.
    """

    cleaned: np.ndarray
    raw: np.ndarray
    settled: bool


class EchoCanceller(Protocol):
    """What the pipeline needs from an echo canceller."""

    latency_samples: int

    def process(self, mic: np.ndarray, ref: np.ndarray | None) -> EchoOutput: ...


class _AecEngine(Protocol):
    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray: ...


class Aec3EchoCanceller:
    """AEC3 with idle bypass and a constant latency; blocks must be multiples of 10 ms.

    `latency_samples` is the engine's own lag (`AEC3_LATENCY_SAMPLES` for the real one);
    while bypassed the mic goes through a delay line of the same length, and when AEC3
    is switched back on, the stale samples it hands back first are replaced by the delay
    line's, so its output continues the stream exactly where the delay line left it.
    """

    def __init__(
        self,
        engine: _AecEngine,
        *,
        sample_rate_hz: int = 16000,
        idle_bypass_ms: int = 1000,
        latency_samples: int = 0,
        settle_ms: int = 500,
    ) -> None:
        if sample_rate_hz != 16000:
            raise ValueError("Aec3EchoCanceller is set up for 16 kHz capture")
        self._engine = engine
        self._block = sample_rate_hz // 100
        if not 0 <= latency_samples < self._block:
            raise ValueError(f"latency of {latency_samples} samples is not under one block")
        self.latency_samples = latency_samples
        self._idle_bypass_samples = idle_bypass_ms * sample_rate_hz // 1000
        self._settle_samples = settle_ms * sample_rate_hz // 1000
        # Start *processing*: AEC3 whose first call coincides with the start of
        # playback removes 10-20 dB less echo for its first ~2 s (measured); half a
        # second of silent warm-up is enough. So the first `idle_bypass_ms` of the
        # run go through the engine, then the idle bypass takes over.
        self._quiet_samples = 0
        # The engine saw the block just before this one (a fresh engine holds zeros, as
        # the delay line does).
        self._engine_fed = True
        self._played_samples = 0  # audible reference cancelled since AEC3 came on
        self._recent = np.zeros(self._block, dtype=np.int16)  # the last raw block
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
        return cls(
            engine,
            sample_rate_hz=sample_rate_hz,
            idle_bypass_ms=idle_bypass_ms,
            latency_samples=AEC3_LATENCY_SAMPLES,
        )

    @property
    def bypassed(self) -> bool:
        """True while the canceller is idle (reference silent for the bypass time)."""
        return self._quiet_samples >= self._idle_bypass_samples

    def process(self, mic: np.ndarray, ref: np.ndarray | None) -> EchoOutput:
        """Cancel the echo in one mic block (int16); the output lags by `latency_samples`."""
        n = mic.size
        if ref is not None and ref.size != n:
            self._log_bad("reference block has %d samples, mic %d; using silence", ref.size, n)
            ref = None
        mic16 = np.ascontiguousarray(mic, dtype=np.int16)
        raw = self._delayed(mic16)
        playing = reference_active(ref)
        if playing:
            self._quiet_samples = 0
        else:
            self._quiet_samples = min(self._quiet_samples + n, self._idle_bypass_samples)
        if (self.bypassed and not playing) or n % self._block:
            if n % self._block:
                self._log_bad("mic block of %d samples is not a multiple of 10 ms: bypassed", n)
            self.bypassed_blocks += max(1, n // self._block)
            self._engine_fed = False
            self._played_samples = 0
            self._remember(mic16)
            return EchoOutput(raw, raw, settled=False)
        resuming = not self._engine_fed
        self._engine_fed = True
        if playing:
            self._played_samples += n
        far = ref if ref is not None else np.zeros(n, dtype=np.int16)
        far16 = np.ascontiguousarray(far, dtype=np.int16)
        self.processed_blocks += n // self._block
        if n == self._block:
            cleaned = np.asarray(self._engine.process(mic16, far16), dtype=np.int16)
        else:
            cleaned = np.empty(n, dtype=np.int16)
            for i in range(0, n, self._block):
                cleaned[i : i + self._block] = self._engine.process(
                    mic16[i : i + self._block], far16[i : i + self._block]
                )
        if resuming and self.latency_samples:
            # Coming out of bypass, the engine hands back first the `latency_samples` it
            # kept from its last active period (audio from seconds ago). Those positions
            # belong to the delay line: put its samples there (no echo has reached the mic
            # yet at the first block of playback). Feeding the engine nothing extra keeps
            # its adaptation exactly as it was (a refill call measurably changed ERLE).
            cleaned = cleaned.copy()
            cleaned[: self.latency_samples] = raw[: self.latency_samples]
        self._remember(mic16)
        return EchoOutput(cleaned, raw, settled=self._played_samples >= self._settle_samples)

    def _delayed(self, mic: np.ndarray) -> np.ndarray:
        """The mic block as the engine's output lags it: the last `latency_samples` of
        what came before, then all but the last `latency_samples` of this block."""
        lag = self.latency_samples
        if lag == 0:
            return mic
        return np.concatenate((self._recent[self._block - lag :], mic))[: mic.size]

    def _remember(self, mic: np.ndarray) -> None:
        if mic.size >= self._block:
            self._recent = mic[mic.size - self._block :].copy()
        else:
            self._recent = np.concatenate((self._recent[mic.size :], mic))

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


def _energies_db(blocks: np.ndarray) -> np.ndarray:
    """`block_energy_db` of each row of a 2-D int16 array, in one pass."""
    x = blocks.astype(np.float64)
    return 10.0 * np.log10(np.einsum("ij,ij->i", x, x) / max(1, x.shape[1]) + 1.0)


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
        self._step = sample_rate_hz // 100
        self._next = 0
        self.floor_db: float | None = None
        self.filled_blocks = 0

    def process(self, mic: np.ndarray, cleaned: np.ndarray, ref_active: bool) -> np.ndarray:
        """Return the block the VAD should see."""
        if ref_active:
            self._since_ref = 0
        elif self._since_ref + mic.size < self._learn_after:
            self._since_ref += mic.size  # too soon after playback: nothing to learn yet
        else:
            # 10 ms at a time, so a block of several (the capture pipeline hands those over
            # while idle) is learned exactly as its 10 ms blocks one by one would be; their
            # energies come from one numpy pass either way (the same numbers).
            step = self._step if mic.size % self._step == 0 else mic.size
            energies = _energies_db(mic.reshape(-1, step)).tolist()
            for i, energy in enumerate(energies):
                self._since_ref = min(self._since_ref + step, self._learn_after)
                if self._since_ref >= self._learn_after:
                    self._learn(energy, mic[i * step : (i + 1) * step])
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

    def _learn(self, energy: float, mic: np.ndarray) -> None:
        self._cur_min = energy if self._cur_min is None else min(self._cur_min, energy)
        self._cur_samples += mic.size
        if self._cur_samples >= self._window:
            self._minima.append(self._cur_min)
            self._cur_min = None
            self._cur_samples = 0
        floor = min(self._minima) if self._minima else None
        if self._cur_min is not None:
            floor = self._cur_min if floor is None else min(floor, self._cur_min)
        assert floor is not None
        self.floor_db = floor
        if energy <= self.floor_db + self._bank_margin:
            self._bank.append(mic.copy())

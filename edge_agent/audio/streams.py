"""One open set of PortAudio streams: formats, the three callbacks, and rendering.

The callbacks run on PortAudio's thread(s) and never block:

* **mic side** (input and duplex callbacks): resample to 16 kHz, cut fixed blocks
  (``block_ms``, 10 ms = 160 samples by default, as AEC3 wants) and hand each to
  ``on_block(mic, ref, pos)``, which must not block either (the daemon's is
  :meth:`edge_agent.audio.capture.CapturePipeline.on_block`). Without ``on_block`` the blocks
  are only counted.
* **speaker side** (output and duplex callbacks): pull 24 kHz audio from
  ``output_source(n)``, resample it to the device rate, map it to the device's channels.

The echo reference (``ref``) is what the speaker was given, at 16 kHz:

* **Separate streams** (echo cancellation off): the output callback resamples what it played
  and leaves it in a short bounded hand-off for the mic side. In step by sample count but
  only aligned to within a device period or two: too loose for echo cancellation, meant for
  the playback guard that keeps the wake word and VAD from firing on the device's own voice.
* **Full duplex** (what echo cancellation needs, see audio/echo.py): ONE stream, input and
  output at one device rate. The output block is rendered first, and the reference is
  exactly that block resampled by its own streaming resampler, the twin of the mic's: both
  see the same number of samples per callback, so reference and mic stay sample-aligned
  (zeros while nothing plays).
  PortAudio's ALSA backend runs the two directions in one callback thread even when they are
  different ALSA devices (verified over the test rig); on real hardware keep them on one
  card, because two cards have two clocks and drift into xruns.
* **Degraded** (capture only, the speaker is missing): ``ref`` is zeros (nothing plays, so
  nothing echoes), and the output source is still pulled at the mic's real-time pace and
  discarded, so a reply drains as if it had played.

Idle (full duplex, what the device does nearly all of its life): the callback still runs
every ``block_ms`` (the period sets the output latency, hence barge-in and cue delays), but
does as little as it can there. While the source gives digital silence and the output
resampler is quiet (:meth:`StreamResampler.skip_silence`), the device gets a prebuilt block
of zeros; a source that can say it is quiet (``output_quiet``, the daemon's reply playback)
is not even pulled then. And when ``on_block`` answered with an object whose ``hold_grid`` is
``(phase, period)`` (the capture pipeline: the ears listen for the wake word alone), the raw
mic input of silent-output callbacks is held back until the blocks it makes would reach a
position ``phase + k * period``, then resampled in one piece (soxr's streaming output does not
depend on how the input is cut: same samples, measured) and delivered as the same 10 ms
blocks at the same positions. Nothing is held while anything plays, nor for more than
``_MAX_HELD_CALLBACKS`` callbacks. A callback that holds (or delivers) works out how many
of the next ones may be held as well (the grid and the device period do not move while
nothing is delivered); those take the short path at the top of the duplex callback: keep
the input, count the silence played, answer the prebuilt silent block, and leave the rest
(the output resampler's skipped zeros, the held length) to the next full callback, which
settles it exactly as if each had gone the long way. Each still asks ``output_quiet()`` and
reads the grid, so a cue, a reply or a change of listening ends the batch at once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyaudio

from edge_agent.audio import devices as dev
from edge_agent.audio.capture import reaches_grid
from edge_agent.audio.resample import StreamResampler
from edge_agent.audio.threadstate import ThreadStatePins

logger = logging.getLogger(__name__)

MIC_RATE_HZ = 16_000
SOURCE_RATE_HZ = 24_000

OutputSource = Callable[[int], np.ndarray]
"""``output_source(n)`` -> exactly ``n`` int16 samples at 24 kHz (called on the audio thread)."""

OutputQuiet = Callable[[], bool]
"""``output_quiet()`` (audio thread, optional): True when the source's next ``n`` samples are
digital silence and pulling them would change nothing in it (no reply, no cue, nothing
fading): idle callbacks then skip the pull (see "Idle" above)."""

BlockCallback = Callable[[np.ndarray, np.ndarray | None, int], Any]
"""``on_block(mic, ref, capture_sample_pos)``: 16 kHz int16 blocks; must not block. It may
return an object with a ``hold_grid`` attribute (read on the audio thread): see "Idle" above."""

_SILENCE = np.zeros(0, dtype=np.int16)
_PLAYED_HANDOFF_SAMPLES = MIC_RATE_HZ // 5  # 200 ms: more means the mic side is stalled
_MAX_RENDER_PULLS = 8  # per callback; only the resampler's first call needs more than one
_MAX_HELD_CALLBACKS = 8  # idle mic input held back at most this many callbacks (80 ms)
_UNPIN_PERIODS = 4  # closing: how long (in blocks) the last callback may take to come


@dataclass
class StreamCounters:
    """Kept across reopens. Written on the audio thread, read anywhere (int updates are
    atomic)."""

    captured_samples: int = 0
    played_device_samples: int = 0
    played_24k: float = 0.0  # device samples scaled to 24 kHz (fractional at 44.1 kHz)
    pulled_samples_24k: int = 0
    input_overflows: int = 0
    output_underflows: int = 0
    callback_errors: int = 0
    source_errors: int = 0
    discarded_samples_24k: int = 0  # pulled from the source while no speaker was open
    short_path_callbacks: int = 0  # idle callbacks that took the short path
    input_stalled: bool = False  # set by the supervisor on a stall, cleared by the next audio


@dataclass(frozen=True)
class StreamSetup:
    """What every session gets from the engine, the same across reopens."""

    capture_rates_hz: tuple[int, ...]
    playback_rates_hz: tuple[int, ...]
    duplex_rates_hz: tuple[int, ...]
    block_ms: int
    output_source: OutputSource | None
    on_block: BlockCallback | None
    counters: StreamCounters
    clock: Callable[[], float] = time.monotonic
    output_quiet: OutputQuiet | None = None

    @property
    def block_samples(self) -> int:
        return MIC_RATE_HZ * self.block_ms // 1000

    def frames(self, rate: int) -> int:
        """Device frames per callback: one block's duration at the device rate."""
        return max(1, rate * self.block_ms // 1000)


@dataclass
class Session:
    """One open set of streams (replaced wholesale on every reopen).

    The supervisor creates it, :meth:`configure` picks formats, :meth:`open` opens and starts
    the streams; the callbacks only touch this session's state and the shared counters.
    """

    pa: pyaudio.PyAudio
    setup: StreamSetup
    stop: threading.Event  # the run's stop flag
    duplex: bool
    degraded: bool = False  # capture only: the configured output is missing or failing
    output_problem: str = ""  # why, when degraded
    in_name: str = ""
    out_name: str = ""
    in_index: int = -1
    out_index: int | None = None
    in_rate: int = 0
    in_channels: int = 1
    out_rate: int = 0
    out_channels: int = 1
    mic_rs: StreamResampler | None = None
    ref_rs: StreamResampler | None = None
    out_rs: StreamResampler | None = None
    streams: list[tuple[str, Any]] = field(default_factory=list)
    mic_acc: np.ndarray = field(default_factory=lambda: _SILENCE)
    ref_acc: np.ndarray = field(default_factory=lambda: _SILENCE)
    out_ring: np.ndarray = field(default_factory=lambda: _SILENCE)
    # Separate streams: played audio at 16 kHz waiting for the mic side (under played_lock).
    played16: np.ndarray = field(default_factory=lambda: _SILENCE)
    played_lock: threading.Lock = field(default_factory=threading.Lock)
    started_at: float = 0.0
    last_in: float = 0.0
    last_out: float = 0.0
    watch_output: bool = False
    input_latency_s: float = 0.0  # PortAudio's figure for the opened streams
    output_latency_s: float = 0.0
    stable: bool = False
    closing: bool = False
    discard_credit: float = 0.0  # degraded: 24 kHz samples owed to the output source
    # Idle (see the module docstring): raw mic input held back, what on_block answered, and
    # whether the last rendered block was the prebuilt silence.
    held: list[bytes] = field(default_factory=list)
    held_frames: int = 0
    hold_source: Any = None
    out_silent: bool = False
    silent_out: np.ndarray = field(default_factory=lambda: _SILENCE)
    silent_bytes: bytes = b""
    # The short path (see the module docstring): callbacks it may still take, how many it
    # took since the last full callback, and their length in device frames.
    batch_left: int = 0
    fast_held: int = 0
    fast_frames: int = 0
    fast_pull: int = 0  # 24 kHz samples each would have pulled
    fast_played_24k: float = 0.0
    # The callback threads' Python thread states, kept between callbacks (threadstate.py).
    pins: ThreadStatePins = field(default_factory=ThreadStatePins)

    # ------------------------------------------------------------- open and close

    def configure(self, in_dev: dev.DeviceInfo, out_dev: dev.DeviceInfo | None) -> None:
        """Pick rates and channels the devices take, and build the resamplers."""
        setup = self.setup
        self.in_name = in_dev.name
        if self.duplex:
            assert out_dev is not None
            rate, channels = dev.pick_duplex_format(self.pa, in_dev, out_dev, setup.duplex_rates_hz)
            self.in_rate = self.out_rate = rate
            self.in_channels = self.out_channels = channels
            self.out_name = out_dev.name
            self.ref_rs = StreamResampler(rate, MIC_RATE_HZ)
        else:
            self.in_rate, self.in_channels = dev.pick_format(
                self.pa, [in_dev], "input", setup.capture_rates_hz
            )
            if out_dev is not None and setup.output_source is not None:
                self.out_rate, self.out_channels = dev.pick_format(
                    self.pa, [out_dev], "output", setup.playback_rates_hz
                )
                self.out_name = out_dev.name
                self.ref_rs = StreamResampler(self.out_rate, MIC_RATE_HZ)  # for the guard
        self.mic_rs = StreamResampler(self.in_rate, MIC_RATE_HZ)
        if self.out_rate:
            self.out_rs = StreamResampler(SOURCE_RATE_HZ, self.out_rate)
        self.in_index = in_dev.index
        self.out_index = out_dev.index if out_dev else None

    def open(self) -> None:
        """Open and start the configured streams; raises AudioDeviceError."""
        pa, frames = self.pa, self.setup.frames
        try:
            if self.duplex:
                stream = pa.open(
                    format=pyaudio.paInt16,
                    channels=self.in_channels,
                    rate=self.in_rate,
                    input=True,
                    output=True,
                    input_device_index=self.in_index,
                    output_device_index=self.out_index,
                    frames_per_buffer=frames(self.in_rate),
                    stream_callback=self._duplex_callback,
                    start=False,
                )
                self.streams.append(("duplex", stream))
            else:
                stream = pa.open(
                    format=pyaudio.paInt16,
                    channels=self.in_channels,
                    rate=self.in_rate,
                    input=True,
                    input_device_index=self.in_index,
                    frames_per_buffer=frames(self.in_rate),
                    stream_callback=self._input_callback,
                    start=False,
                )
                self.streams.append(("input", stream))
                if self.out_rate:
                    stream = pa.open(
                        format=pyaudio.paInt16,
                        channels=self.out_channels,
                        rate=self.out_rate,
                        output=True,
                        output_device_index=self.out_index,
                        frames_per_buffer=frames(self.out_rate),
                        stream_callback=self._output_callback,
                        start=False,
                    )
                    self.streams.append(("output", stream))
                    self.watch_output = True
            for label, stream in self.streams:
                if label in ("input", "duplex"):
                    self.input_latency_s = float(stream.get_input_latency())
                if label in ("output", "duplex"):
                    self.output_latency_s = float(stream.get_output_latency())
            self.started_at = self.last_in = self.last_out = self.setup.clock()
            with dev.quiet_stderr():
                for _, stream in self.streams:
                    stream.start_stream()
        except (OSError, ValueError) as exc:
            raise dev.AudioDeviceError(
                f"cannot open {'duplex' if self.duplex else 'audio'} stream "
                f"(input {self.in_name!r} at {self.in_rate} Hz"
                + (f", output {self.out_name!r} at {self.out_rate} Hz" if self.out_name else "")
                + f"): {exc}"
            ) from exc

    def close_streams(self) -> None:
        """Close the streams (PortAudio stays initialised)."""
        self.closing = True
        if self.pins.pinned:  # the next callback answers paAbort and gives its state back
            self.pins.wait_released(_UNPIN_PERIODS * self.setup.block_ms / 1000)
        with dev.PA_LOCK:
            for label, stream in self.streams:
                try:
                    stream.close()  # Pa_CloseStream aborts an active stream
                except Exception as exc:
                    logger.debug("closing %s stream: %s", label, exc)
            self.streams.clear()

    def teardown(self) -> None:
        """Close the streams and terminate PortAudio; may block while a driver is stuck."""
        self.close_streams()
        with dev.PA_LOCK:
            try:
                with dev.quiet_stderr():
                    self.pa.terminate()
            except Exception as exc:
                logger.debug("Pa_Terminate: %s", exc)

    # ------------------------------------------------------------------ callbacks

    def _input_callback(self, in_data: bytes, frames: int, time_info: Any, status: int) -> Any:
        if self.closing or self.stop.is_set():
            self.pins.unpin()
            return None, pyaudio.paAbort
        self.pins.pin()
        counters = self.setup.counters
        try:
            self.last_in = self.setup.clock()
            if status & pyaudio.paInputOverflow:
                counters.input_overflows += 1
            assert self.mic_rs is not None
            if self.degraded:
                self._discard_output(frames)
            mic16 = self.mic_rs.process(self._mic(in_data))
            self._deliver(mic16, self._take_played(len(mic16)))
        except Exception as exc:
            self._callback_failed(exc)
        return None, pyaudio.paContinue

    def _output_callback(
        self, in_data: bytes | None, frames: int, time_info: Any, status: int
    ) -> Any:
        if self.closing or self.stop.is_set():
            self.pins.unpin()
            return bytes(frames * 2 * self.out_channels), pyaudio.paAbort
        self.pins.pin()
        try:
            self.last_out = self.setup.clock()
            if status & pyaudio.paOutputUnderflow:
                self.setup.counters.output_underflows += 1
            out = self._render(frames)
            self._keep_played(out)
        except Exception as exc:
            self._callback_failed(exc)
            out = np.zeros(frames, dtype=np.int16)
        return self._device_bytes(out), pyaudio.paContinue

    def _duplex_callback(self, in_data: bytes, frames: int, time_info: Any, status: int) -> Any:
        if (
            self.batch_left
            and not status
            and not self.closing
            and frames == self.fast_frames
            and self._still_idle()
        ):
            # The short path (module docstring); the counters others read stay exact.
            self.batch_left -= 1
            self.fast_held += 1
            self.held.append(in_data)
            counters = self.setup.counters
            counters.pulled_samples_24k += self.fast_pull
            counters.played_device_samples += frames
            counters.played_24k += self.fast_played_24k
            counters.short_path_callbacks += 1
            return self.silent_bytes, pyaudio.paContinue
        self.batch_left = 0
        if self.closing or self.stop.is_set():
            self.pins.unpin()
            return bytes(frames * 2 * self.out_channels), pyaudio.paAbort
        self.pins.pin()
        counters = self.setup.counters
        try:
            self._settle_fast_held()
            self.last_in = self.last_out = self.setup.clock()
            if status & pyaudio.paInputOverflow:
                counters.input_overflows += 1
            if status & pyaudio.paOutputUnderflow:
                counters.output_underflows += 1
            out = self._render(frames)
            holdable = self._holdable_callbacks(frames) if self.out_silent else 0
            if holdable:
                self.held.append(in_data)
                self.held_frames += frames
                holdable -= 1
            else:
                self._duplex_mic(in_data, out, frames)
                # The next batch may begin with the next callback.
                holdable = self._holdable_callbacks(frames) if self.out_silent else 0
            if holdable and self.setup.output_quiet is not None:
                self._start_batch(holdable, frames)
        except Exception as exc:
            self._callback_failed(exc)
            out = np.zeros(frames, dtype=np.int16)
        return self._device_bytes(out), pyaudio.paContinue

    def _still_idle(self) -> bool:
        """The short path's checks: not stopping, nothing to play, the grid still there."""
        quiet, source = self.setup.output_quiet, self.hold_source
        return (
            quiet is not None
            and source is not None
            and not self.stop.is_set()
            and quiet()
            and source.hold_grid is not None
        )

    def _start_batch(self, callbacks: int, frames: int) -> None:
        """Let the next `callbacks` callbacks of `frames` frames take the short path."""
        self.batch_left, self.fast_frames = callbacks, frames
        self.fast_pull = math.ceil(frames * SOURCE_RATE_HZ / self.out_rate)
        self.fast_played_24k = frames * SOURCE_RATE_HZ / self.out_rate

    def _settle_fast_held(self) -> None:
        """Finish the short path's callbacks as the long path would have: each rendered
        the source's silence without pulling it (``output_quiet``; the counters were
        kept), the output resampler skipped it, and the input was held."""
        k, self.fast_held = self.fast_held, 0
        if not k:
            return
        assert self.out_rs is not None
        frames = k * self.fast_frames
        self.held_frames += frames
        if self.out_rs.skip_silence(k * self.fast_pull) != frames:  # quiet throughout
            raise RuntimeError("the output resampler could not skip the held callbacks")

    def _duplex_mic(self, in_data: bytes, out: np.ndarray, frames: int) -> None:
        """Resample the mic input (with any held back) and its reference; deliver blocks."""
        assert self.mic_rs is not None and self.ref_rs is not None
        if self.held:
            self.held.append(in_data)
            mic = self._mic(b"".join(self.held))
            ref = np.zeros(self.held_frames + frames, dtype=np.int16)  # held: silence played
            ref[self.held_frames :] = out
            self.held, self.held_frames = [], 0
        else:
            mic, ref = self._mic(in_data), out
        self._deliver(self.mic_rs.process(mic), self.ref_rs.process(ref))

    def _holdable_callbacks(self, frames: int) -> int:
        """Idle: how many callbacks, this one first, may hold their mic input back? Each
        may while the blocks the held input would complete reach no position of the
        consumer's hold grid (see the module docstring); 0: deliver now."""
        source, mic_rs = self.hold_source, self.mic_rs
        if source is None or mic_rs is None:
            return 0
        grid = getattr(source, "hold_grid", None)
        if grid is None or (frames * MIC_RATE_HZ) % self.in_rate:
            return 0
        if mic_rs.in_samples < self.in_rate // 10:  # past the resampler's start-up
            return 0
        start = self.setup.counters.captured_samples  # the next block delivered starts here
        block = self.setup.block_samples
        count = 0
        while len(self.held) + count < _MAX_HELD_CALLBACKS:
            held_frames = self.held_frames + (count + 1) * frames
            ready = len(self.mic_acc) + held_frames * MIC_RATE_HZ // self.in_rate
            whole = ready - ready % block
            if whole and reaches_grid(grid, start, whole):
                break
            count += 1
        return count

    def _callback_failed(self, exc: Exception) -> None:
        counters = self.setup.counters
        counters.callback_errors += 1
        if counters.callback_errors == 1:  # once; the audio thread must not flood the log
            logger.error("audio callback failed (block dropped): %r", exc)

    # ------------------------------------------------------------------ mic side

    def _mic(self, data: bytes) -> np.ndarray:
        x = np.frombuffer(data, dtype="<i2")
        return x[:: self.in_channels] if self.in_channels > 1 else x

    def _keep_played(self, out: np.ndarray) -> None:
        """Separate streams: queue what was played (at 16 kHz) for the mic side's ``ref``."""
        if self.ref_rs is None:
            return
        played = self.ref_rs.process(out)
        with self.played_lock:
            joined = np.concatenate((self.played16, played)) if len(self.played16) else played
            self.played16 = joined[-_PLAYED_HANDOFF_SAMPLES:]  # bounded: oldest dropped

    def _take_played(self, n: int) -> np.ndarray | None:
        """The next ``n`` played samples for the mic side, zero-padded; None: no speaker
        configured; zeros while it is missing (nothing plays, nothing echoes)."""
        if self.degraded:
            return np.zeros(n, dtype=np.int16)
        if self.ref_rs is None:
            return None
        with self.played_lock:
            ref, self.played16 = self.played16[:n], self.played16[n:]
        if len(ref) < n:
            ref = np.concatenate((ref, np.zeros(n - len(ref), dtype=np.int16)))
        return ref

    def _deliver(self, mic16: np.ndarray, ref16: np.ndarray | None) -> None:
        """Cut fixed 16 kHz blocks (mic and reference in lockstep) and hand them on."""
        counters = self.setup.counters
        if counters.input_stalled and len(mic16):
            counters.input_stalled = False
        n = self.setup.block_samples
        if (
            len(mic16) == n
            and not len(self.mic_acc)
            and (ref16 is None or (len(ref16) == n and not len(self.ref_acc)))
        ):
            # The steady state at every rate the resamplers map exactly: one callback, one
            # block. Both arrays are fresh (never written again), so they go on uncopied.
            pos = counters.captured_samples
            counters.captured_samples = pos + n
            self._emit(mic16, ref16, pos)
            return
        self.mic_acc = np.concatenate((self.mic_acc, mic16)) if len(self.mic_acc) else mic16
        if ref16 is not None:
            self.ref_acc = np.concatenate((self.ref_acc, ref16)) if len(self.ref_acc) else ref16
            ready = min(len(self.mic_acc), len(self.ref_acc))
        else:
            ready = len(self.mic_acc)
        # Views, not copies: the accumulators are only ever replaced, never written into.
        while ready >= n:
            mic = self.mic_acc[:n]
            self.mic_acc = self.mic_acc[n:]
            ref = None
            if ref16 is not None:
                ref = self.ref_acc[:n]
                self.ref_acc = self.ref_acc[n:]
            ready -= n
            pos = counters.captured_samples
            counters.captured_samples = pos + n
            self._emit(mic, ref, pos)

    def _emit(self, mic: np.ndarray, ref: np.ndarray | None, pos: int) -> None:
        on_block = self.setup.on_block
        if on_block is None:
            return
        try:
            answer = on_block(mic, ref, pos)
            self.hold_source = answer if hasattr(answer, "hold_grid") else None
        except Exception as exc:
            self.hold_source = None
            counters = self.setup.counters
            counters.callback_errors += 1
            if counters.callback_errors == 1:
                logger.error("on_block failed (block dropped): %r", exc)

    # ------------------------------------------------------------------ speaker side

    def _device_bytes(self, out: np.ndarray) -> bytes:
        if out is self.silent_out:
            return self.silent_bytes
        if self.out_channels > 1:
            out = np.repeat(out, self.out_channels)
        return out.astype("<i2", copy=False).tobytes()

    def _pull(self, n: int) -> np.ndarray:
        """``n`` samples at 24 kHz from the source; silence if it fails."""
        counters, source = self.setup.counters, self.setup.output_source
        counters.pulled_samples_24k += n
        if source is None:
            return np.zeros(n, dtype=np.int16)
        try:
            x = np.asarray(source(n)).reshape(-1)
            if x.dtype != np.int16:
                x = x.astype(np.int16)
        except Exception as exc:
            counters.source_errors += 1
            if counters.source_errors == 1:
                logger.error("output_source failed (silence played): %r", exc)
            return np.zeros(n, dtype=np.int16)
        if len(x) != n:
            counters.source_errors += 1
            # Pad a short read with silence (never repeat audio); cut a long one.
            x = np.concatenate((x[:n], np.zeros(max(0, n - len(x)), dtype=np.int16)))
        return x

    def _discard_output(self, frames: int) -> None:
        """Degraded: pull what a speaker would have played during these mic frames, and
        drop it. The jitter buffer then drains at real-time pace, so a reply "plays" to its
        end (the daemon sees it drained) instead of waiting, possibly for minutes, to burst
        out when the speaker returns; cues are consumed the same way."""
        self.discard_credit += frames * SOURCE_RATE_HZ / self.in_rate
        n = int(self.discard_credit)
        if n > 0:
            self.discard_credit -= n
            self._pull(n)
            self.setup.counters.discarded_samples_24k += n

    def _render(self, frames: int) -> np.ndarray:
        """Exactly ``frames`` device-rate samples: pulled at 24 kHz, resampled.

        A barge-in does not reset the resampler or drop its leftover samples: the jitter
        buffer's fade-out then flows through the same filter state, so the cut is as smooth
        at 48 kHz as at 24 kHz. What that keeps is under 1 ms of leftover plus the filter's
        ~2 ms delay (measured in tests/test_audio_engine.py).
        """
        self.out_silent = False
        if self.out_rs is None:  # no output open: nothing to render
            return np.zeros(frames, dtype=np.int16)
        ring = self.out_ring
        pulls = 0
        if not len(ring) and self.out_rs.quiet:
            # Idle: the source's silence needs no resampling (StreamResampler.skip_silence),
            # and no pull at all when the source says it is quiet (the same zeros).
            need = math.ceil(frames * SOURCE_RATE_HZ / self.out_rate)
            quiet = self.setup.output_quiet
            if quiet is not None and quiet():
                self.setup.counters.pulled_samples_24k += need
                x = _SILENCE
                m = self.out_rs.skip_silence(need)
            else:
                x = self._pull(need)
                m = None if np.count_nonzero(x) else self.out_rs.skip_silence(len(x))
            if m == frames:
                self._count_played(frames)
                self.out_silent = True
                return self._silent_block(frames)
            if m is None and not len(x):  # quiet, but the resampler must see the zeros
                x = np.zeros(need, dtype=np.int16)
            ring = np.zeros(m, dtype=np.int16) if m is not None else self.out_rs.process(x)
            pulls = 1
        while len(ring) < frames and pulls < _MAX_RENDER_PULLS:
            need = math.ceil((frames - len(ring)) * SOURCE_RATE_HZ / self.out_rate)
            y = self.out_rs.process(self._pull(need))
            ring = np.concatenate((ring, y)) if len(ring) else y
            pulls += 1
        if len(ring) < frames:  # resampler warm-up: pad the very first block
            ring = np.concatenate((ring, np.zeros(frames - len(ring), dtype=np.int16)))
        out, self.out_ring = ring[:frames], ring[frames:]
        self._count_played(frames)
        return out

    def _count_played(self, frames: int) -> None:
        counters = self.setup.counters
        counters.played_device_samples += frames
        counters.played_24k += frames * SOURCE_RATE_HZ / self.out_rate

    def _silent_block(self, frames: int) -> np.ndarray:
        """A prebuilt block of zeros (read-only) and its device bytes."""
        if len(self.silent_out) != frames:
            self.silent_out = np.zeros(frames, dtype=np.int16)
            self.silent_out.flags.writeable = False
            self.silent_bytes = bytes(frames * 2 * self.out_channels)
        return self.silent_out

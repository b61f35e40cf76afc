"""The sound card edge: PyAudio capture and playback, duplex for echo cancellation.

What the daemon sees: 16 kHz capture blocks ``on_block(mic, ref, pos)`` out (on PortAudio's
thread; the daemon's is :meth:`edge_agent.audio.capture.CapturePipeline.on_block`), 24 kHz
audio ``output_source(n)`` in, and a state to watch. Behind it:

* :mod:`edge_agent.audio.streams`: one open set of streams, its callbacks and rendering
  (resampling to the device rate, channel mapping, the echo reference);
* :mod:`edge_agent.audio.supervisor`: the thread that opens the devices, watches them,
  reopens them with backoff, degrades to capture only when the speaker is missing and
  restores playback when it is back.

Modes: separate streams (echo cancellation off): capture at 16 kHz when the device takes it,
otherwise at the first supported rate of ``capture_rates_hz``, resampled; playback at
``playback_rate_hz`` or a fallback rate. Full duplex (``duplex=True``, echo cancellation on):
ONE stream, input and output at one device rate, so the echo reference is sample-aligned
with the mic (AEC3 needs the reference to be exactly what was played; see audio/echo.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from edge_agent.audio import devices as dev
from edge_agent.audio.streams import (
    MIC_RATE_HZ,
    SOURCE_RATE_HZ,
    BlockCallback,
    OutputQuiet,
    OutputSource,
    StreamCounters,
    StreamSetup,
)
from edge_agent.audio.supervisor import DeviceSupervisor, EngineState

__all__ = [
    "MIC_RATE_HZ",
    "SOURCE_RATE_HZ",
    "AudioEngine",
    "BlockCallback",
    "EngineState",
    "OutputSource",
]

DEFAULT_CAPTURE_RATES_HZ = (16_000, 48_000, 44_100, 32_000, 96_000, 22_050, 8_000)
DEFAULT_PLAYBACK_RATES_HZ = (24_000, 48_000, 44_100, 16_000, 32_000, 22_050, 96_000)
DEFAULT_DUPLEX_RATES_HZ = (48_000, 16_000, 44_100, 32_000, 24_000, 96_000)


class AudioEngine:
    """Capture (16 kHz blocks out) and playback (24 kHz source in) over PyAudio.

    The constructor only stores settings; :meth:`start` opens the devices on the supervisor
    thread and returns once the first attempt has succeeded or failed (it never raises for
    device problems: watch :attr:`state` / :attr:`healthy` / :attr:`last_error`). Without
    ``on_block`` captured blocks are only counted (a playback-only user). ``output_quiet``
    (optional) lets idle callbacks skip pulling a source that has nothing to play.
    """

    def __init__(
        self,
        *,
        input_device: str = "default",
        output_device: str | None = "default",
        capture_rate_hz: int = MIC_RATE_HZ,
        capture_rates_hz: tuple[int, ...] = DEFAULT_CAPTURE_RATES_HZ,
        playback_rate_hz: int = SOURCE_RATE_HZ,
        playback_rates_hz: tuple[int, ...] = DEFAULT_PLAYBACK_RATES_HZ,
        duplex: bool = False,
        duplex_rate_hz: int = 48_000,
        duplex_rates_hz: tuple[int, ...] = DEFAULT_DUPLEX_RATES_HZ,
        block_ms: int = 10,
        output_source: OutputSource | None = None,
        output_quiet: OutputQuiet | None = None,
        on_block: BlockCallback | None = None,
        reopen_initial_delay_s: float = 0.25,
        reopen_max_delay_s: float = 10.0,
        stall_timeout_s: float = 2.0,
        stable_after_s: float = 5.0,
        stop_timeout_s: float = 0.45,
        start_timeout_s: float = 5.0,
        monitor_interval_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if block_ms <= 0 or MIC_RATE_HZ * block_ms % 1000:
            raise ValueError(f"block_ms={block_ms} is not a whole number of 16 kHz samples")
        if duplex and not output_device:
            raise ValueError("duplex needs an output device")
        self._counters = StreamCounters()
        setup = StreamSetup(
            capture_rates_hz=dev.unique_rates(capture_rate_hz, capture_rates_hz),
            playback_rates_hz=dev.unique_rates(playback_rate_hz, playback_rates_hz),
            duplex_rates_hz=dev.unique_rates(duplex_rate_hz, duplex_rates_hz),
            block_ms=block_ms,
            output_source=output_source,
            on_block=on_block,
            counters=self._counters,
            clock=clock,
            output_quiet=output_quiet,
        )
        self._supervisor = DeviceSupervisor(
            setup,
            input_device=input_device,
            output_device=output_device or None,
            duplex=duplex,
            reopen_initial_delay_s=min(reopen_initial_delay_s, reopen_max_delay_s),
            reopen_max_delay_s=reopen_max_delay_s,
            stall_timeout_s=stall_timeout_s,
            stable_after_s=stable_after_s,
            stop_timeout_s=stop_timeout_s,
            start_timeout_s=start_timeout_s,
            monitor_interval_s=monitor_interval_s,
        )
        self.input_device = input_device
        self.output_device = output_device or None
        self.duplex = duplex
        self.block_ms = block_ms
        self.block_samples = setup.block_samples

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> EngineState:
        """Open the devices (on the supervisor thread); wait for the first attempt."""
        return self._supervisor.start()

    def stop(self) -> None:
        """Close everything; idempotent; returns within ``stop_timeout_s``."""
        self._supervisor.stop()

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> EngineState:
        return self._supervisor.state

    @property
    def healthy(self) -> bool:
        """True while the mic is open and running, with or without the speaker (see
        :attr:`output_missing`): the daemon keeps listening for the wake word then."""
        return self.state in (EngineState.RUNNING, EngineState.DEGRADED)

    @property
    def output_missing(self) -> bool:
        """Capture runs without playback because the speaker is missing or failing (state
        ``degraded``; ``last_error`` says why); playback resumes by itself when it is back."""
        return self.state is EngineState.DEGRADED

    @property
    def last_error(self) -> str | None:
        """Why the devices last failed (kept after recovery, for status displays)."""
        return self._supervisor.last_error

    @property
    def input_stalled(self) -> bool:
        """The mic went silent while open (wedged), and no audio has come since, whatever
        the reopen attempts report: the daemon's watchdog then stops pinging."""
        return self._counters.input_stalled

    @property
    def duplex_active(self) -> bool:
        s = self._supervisor.session
        return bool(s and s.duplex)

    # ------------------------------------------------------------------ the open devices

    @property
    def input_rate_hz(self) -> int | None:
        s = self._supervisor.session
        return s.in_rate if s else None

    @property
    def output_rate_hz(self) -> int | None:
        s = self._supervisor.session
        return s.out_rate if s and s.out_rate else None

    @property
    def input_device_name(self) -> str | None:
        s = self._supervisor.session
        return s.in_name if s else None

    @property
    def output_device_name(self) -> str | None:
        s = self._supervisor.session
        return s.out_name if s and s.out_name else None

    @property
    def output_latency_s(self) -> float | None:
        """PortAudio's output latency of the open stream (the ALSA buffer): audio handed
        to the device plays this much later. None when no output is open."""
        s = self._supervisor.session
        return s.output_latency_s if s and s.out_rate else None

    @property
    def input_latency_s(self) -> float | None:
        s = self._supervisor.session
        return s.input_latency_s if s else None

    # ------------------------------------------------------------------ counters

    @property
    def captured_samples(self) -> int:
        """16 kHz samples handed to ``on_block`` so far: the watchdog's sign of life."""
        return self._counters.captured_samples

    @property
    def played_samples_24k(self) -> int:
        """What has been handed to the device, counted in 24 kHz samples (exact when the
        device runs at 24 kHz; otherwise device samples scaled by 24000/rate)."""
        return int(self._counters.played_24k)

    @property
    def played_device_samples(self) -> int:
        return self._counters.played_device_samples

    @property
    def pulled_samples_24k(self) -> int:
        return self._counters.pulled_samples_24k

    @property
    def discarded_samples_24k(self) -> int:
        """Pulled from the source and dropped while no speaker was open (degraded)."""
        return self._counters.discarded_samples_24k

    @property
    def input_overflows(self) -> int:
        return self._counters.input_overflows

    @property
    def output_underflows(self) -> int:
        return self._counters.output_underflows

    @property
    def callback_errors(self) -> int:
        return self._counters.callback_errors

    @property
    def source_errors(self) -> int:
        return self._counters.source_errors

    @property
    def reopen_count(self) -> int:
        return self._supervisor.reopen_count

    @property
    def output_retries(self) -> int:
        """Degraded: attempts to get the speaker back."""
        return self._supervisor.output_retries

    def stats(self) -> dict[str, Any]:
        """A snapshot for status output."""
        return {
            "state": str(self.state),
            "last_error": self.last_error,
            "input_device": self.input_device_name,
            "output_device": self.output_device_name,
            "input_rate_hz": self.input_rate_hz,
            "output_rate_hz": self.output_rate_hz,
            "duplex": self.duplex_active,
            "input_latency_s": self.input_latency_s,
            "output_latency_s": self.output_latency_s,
            "captured_samples": self.captured_samples,
            "played_samples_24k": self.played_samples_24k,
            "played_device_samples": self.played_device_samples,
            "input_overflows": self.input_overflows,
            "output_underflows": self.output_underflows,
            "callback_errors": self.callback_errors,
            "source_errors": self.source_errors,
            "reopen_count": self.reopen_count,
            "output_missing": self.output_missing,
            "output_retries": self.output_retries,
            "discarded_samples_24k": self.discarded_samples_24k,
            "short_path_callbacks": self._counters.short_path_callbacks,
        }

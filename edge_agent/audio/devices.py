"""PortAudio devices by ALSA name: listing, resolving a configured name, supported rates.

People configure devices by the names ``arecord -L`` / ``edge-agent devices`` show
("default", "USB Audio Device: - (hw:1,0)", a name from asound.conf), not by PortAudio's
index, which changes whenever a device comes or goes. :func:`resolve_device` accepts the
exact name or any unique case-insensitive substring ("USB Audio", "hw:1,0") and, when
nothing or several devices match, raises an error that lists what is available.

PortAudio prints noise on stderr while it initialises (JACK: "Cannot connect to server
socket", ALSA: "Unknown PCM ...") and while it probes formats ("Expression ... failed").
:func:`quiet_stderr` points file descriptor 2 at /dev/null around those calls. That is
process-wide, so it is held as briefly as possible and under a lock; a log line another
thread writes to stderr in that window is lost (the journal handler is not affected).

PortAudio is not thread-safe across initialise/open/close/terminate, and its device list
is only refreshed by a full ``Pa_Terminate()`` + ``Pa_Initialize()`` (which also only
happens when no other PyAudio instance in the process is alive). Every PortAudio call
here, in :mod:`edge_agent.audio.supervisor` and in :mod:`edge_agent.audio.streams` runs
under :data:`PA_LOCK`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import pyaudio

logger = logging.getLogger(__name__)

Direction = Literal["input", "output"]

PA_LOCK = threading.RLock()
"""Serialises every PortAudio call in the process (see module docstring)."""

_STDERR_LOCK = threading.RLock()  # re-entrant: nested use restores in LIFO order


class AudioDeviceError(Exception):
    """A device problem a retry may fix (missing device, failed open)."""


class DeviceNotFoundError(AudioDeviceError):
    """No device matches the configured name."""


class AmbiguousDeviceError(AudioDeviceError):
    """Several devices match the configured name (retrying will not help until config or
    hardware changes)."""


class NoSupportedFormatError(AudioDeviceError):
    """The device accepts none of the sample rates / channel counts we can use."""


@dataclass(frozen=True)
class DeviceInfo:
    """One PortAudio device, as ``edge-agent devices`` prints it."""

    index: int
    name: str
    max_input_channels: int
    max_output_channels: int
    default_rate_hz: float
    host_api: str

    @property
    def is_input(self) -> bool:
        return self.max_input_channels > 0

    @property
    def is_output(self) -> bool:
        return self.max_output_channels > 0

    def has(self, direction: Direction) -> bool:
        return self.is_input if direction == "input" else self.is_output

    def describe(self) -> str:
        dirs = "+".join(d for d, ok in (("in", self.is_input), ("out", self.is_output)) if ok)
        return f"{self.name!r} ({dirs}, {int(self.default_rate_hz)} Hz)"


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Send fd 2 to /dev/null for the duration (C libraries write there directly)."""
    with _STDERR_LOCK:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to silence
            yield
            return
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, 2)
            finally:
                os.close(devnull)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def open_portaudio() -> pyaudio.PyAudio:
    """``pyaudio.PyAudio()`` (``Pa_Initialize``: lists devices) without the stderr noise."""
    with PA_LOCK, quiet_stderr():
        return pyaudio.PyAudio()


@contextlib.contextmanager
def portaudio_session() -> Iterator[pyaudio.PyAudio]:
    """A short-lived PortAudio instance, terminated on exit."""
    with PA_LOCK:
        pa = open_portaudio()
        try:
            yield pa
        finally:
            with quiet_stderr():
                pa.terminate()


def query_devices(pa: pyaudio.PyAudio) -> list[DeviceInfo]:
    """All devices the given PortAudio instance sees, in PortAudio index order."""
    devices = []
    with PA_LOCK:
        for index in range(pa.get_device_count()):
            info = pa.get_device_info_by_index(index)
            try:
                host = str(pa.get_host_api_info_by_index(int(info["hostApi"]))["name"])
            except Exception:  # host api info is cosmetic
                host = "?"
            devices.append(
                DeviceInfo(
                    index=index,
                    name=str(info["name"]),
                    max_input_channels=int(info["maxInputChannels"]),
                    max_output_channels=int(info["maxOutputChannels"]),
                    default_rate_hz=float(info["defaultSampleRate"]),
                    host_api=host,
                )
            )
    return devices


def list_devices() -> list[DeviceInfo]:
    """What ``edge-agent devices`` prints: names, directions and default rates."""
    with portaudio_session() as pa:
        return query_devices(pa)


def _available(devices: Iterable[DeviceInfo], direction: Direction) -> str:
    names = [d.describe() for d in devices if d.has(direction)]
    return ", ".join(names) if names else "none"


def is_exact_match(device: DeviceInfo, wanted: str) -> bool:
    """Whether ``wanted`` names the device in full (ignoring case), not just a part of it."""
    return device.name.casefold() == wanted.strip().casefold()


def resolve_device(
    devices: Sequence[DeviceInfo], wanted: str, direction: Direction, *, exact_only: bool = False
) -> DeviceInfo:
    """The one device for ``wanted``: exact name, then case-insensitive, then unique substring.

    Several exact matches (the same name under two host APIs) prefer ALSA. ``exact_only``
    turns the substring step off: once a configured name has matched a device in full, a
    reopen must not drift to another device that merely contains it ("mic" -> "mic2")
    while the first one is unplugged.
    """
    candidates = [d for d in devices if d.has(direction)]
    key = wanted.strip()
    for same in (
        lambda d: d.name == key,
        lambda d: d.name.casefold() == key.casefold(),
    ):
        exact = [d for d in candidates if same(d)]
        if exact:
            alsa = [d for d in exact if d.host_api == "ALSA"]
            return (alsa or exact)[0]
    partial = [] if exact_only else [d for d in candidates if key.casefold() in d.name.casefold()]
    if len(partial) == 1:
        return partial[0]
    if not partial:
        raise DeviceNotFoundError(
            f"no {direction} device matches {wanted!r}; available {direction} devices: "
            f"{_available(devices, direction)}"
        )
    raise AmbiguousDeviceError(
        f"{len(partial)} {direction} devices match {wanted!r}: "
        f"{', '.join(d.describe() for d in partial)}; use a longer part of the name"
    )


def _format_kwargs(device: DeviceInfo, direction: Direction, channels: int) -> dict[str, int]:
    if direction == "input":
        return {
            "input_device": device.index,
            "input_channels": channels,
            "input_format": pyaudio.paInt16,
        }
    return {
        "output_device": device.index,
        "output_channels": channels,
        "output_format": pyaudio.paInt16,
    }


def is_supported(
    pa: pyaudio.PyAudio, device: DeviceInfo, direction: Direction, rate_hz: int, channels: int = 1
) -> bool:
    """Whether the device opens S16 at this rate and channel count (PortAudio's own test,
    which in ALSA really configures the device)."""
    if channels > (
        device.max_input_channels if direction == "input" else device.max_output_channels
    ):
        return False
    with PA_LOCK, quiet_stderr():
        try:
            return bool(
                pa.is_format_supported(rate_hz, **_format_kwargs(device, direction, channels))
            )
        except ValueError:
            return False


def supported_rates(
    pa: pyaudio.PyAudio,
    device: DeviceInfo,
    direction: Direction,
    rates_hz: Iterable[int],
    channels: int = 1,
) -> list[int]:
    """The rates (in the order given) the device accepts."""
    return [r for r in rates_hz if is_supported(pa, device, direction, r, channels)]


def pick_format(
    pa: pyaudio.PyAudio,
    devices: Sequence[DeviceInfo],
    direction: Direction,
    rates_hz: Sequence[int],
    channel_options: Sequence[int] = (1, 2),
) -> tuple[int, int]:
    """First (rate, channels) that every device accepts; rates in order of preference.

    Mono first; stereo-only devices (common for I2S mics) are opened in stereo and the
    engine uses the first channel.
    """
    for rate in rates_hz:
        for channels in channel_options:
            if all(is_supported(pa, d, direction, rate, channels) for d in devices):
                return rate, channels
    names = " and ".join(d.describe() for d in devices)
    raise NoSupportedFormatError(
        f"{names} accepts none of {list(rates_hz)} Hz as 16-bit {direction} "
        f"with {' or '.join(map(str, channel_options))} channel(s)"
    )


def pick_duplex_format(
    pa: pyaudio.PyAudio,
    input_device: DeviceInfo,
    output_device: DeviceInfo,
    rates_hz: Sequence[int],
    channel_options: Sequence[int] = (1, 2),
) -> tuple[int, int]:
    """First (rate, channels) both directions accept: a PyAudio duplex stream has one rate
    and one channel count for input and output."""
    for rate in rates_hz:
        for channels in channel_options:
            if is_supported(pa, input_device, "input", rate, channels) and is_supported(
                pa, output_device, "output", rate, channels
            ):
                return rate, channels
    raise NoSupportedFormatError(
        f"no common 16-bit rate in {list(rates_hz)} Hz for input {input_device.describe()} "
        f"and output {output_device.describe()}"
    )


def unique_rates(*rates: int | Iterable[int]) -> tuple[int, ...]:
    """Flatten preference lists, keeping the first occurrence of each rate."""
    out: list[int] = []
    for r in rates:
        for rate in [r] if isinstance(r, int) else r:
            if rate not in out:
                out.append(int(rate))
    return tuple(out)

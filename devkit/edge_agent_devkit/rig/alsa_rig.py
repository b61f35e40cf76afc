"""A sound-card-free ALSA rig: real PyAudio/PortAudio over ALSA ``file`` devices.

The rig writes a standalone ALSA configuration (selected with ``ALSA_CONFIG_PATH``; it
replaces the system's ``alsa.conf`` entirely) whose devices are the ALSA ``file`` plugin
over a ``null`` slave:

* **FIFO capture** (:meth:`AlsaRig.add_fifo_capture`): the plugin's ``infile`` is a FIFO fed
  at the sample rate by a feeder thread (:class:`FifoFeeder`), so capture runs in real time.
  The feeder can freeze (a dead mic), vanish and reappear (an unplugged USB mic).
* **FIFO playback** (:meth:`AlsaRig.add_fifo_playback`): the plugin's output ``file`` is a
  FIFO drained at the sample rate by a recorder thread (:class:`FifoRecorder`) that writes
  everything to a regular file and logs *when* each byte was drained, i.e. played.
* **File capture** (:meth:`AlsaRig.add_file_capture`): a regular file as ``infile``; ALSA
  reads it as fast as the application asks, for exactness tests.
* **Duplex** (:meth:`AlsaRig.add_duplex`): capture and playback in one pcm (``type asym``),
  for PortAudio full-duplex streams.
* Capture-only and playback-only devices are wrapped in ``type asym`` with one direction,
  so PortAudio lists them as inputs or outputs only, like real mics and speakers.
* ``only_rate_hz``: wraps a device in ``type plug`` with a fixed slave rate and a rate
  converter that does not exist, so PortAudio accepts exactly that rate and refuses every
  other one (``snd_pcm_hw_params`` fails with "Cannot find rate converter"). This is how a
  "48 kHz-only" USB mic is simulated. (alsa-lib's ``share`` plugin restricts the rate too,
  but corrupts the heap on close in alsa-lib 1.2.8; the ``hw`` plugin's ``rate`` needs a
  real card.)

Facts this module is built around (measured with alsa-lib 1.2.8, PortAudio 19.6):

* ``pcm.!default`` must exist or PortAudio aborts while initialising.
* PortAudio opens every capture device while it lists devices (at ``PyAudio()``), and the
  ``file`` plugin opens ``infile`` with a *blocking* ``open(O_RDONLY)``: a FIFO without a
  writer would hang ``PyAudio()`` forever. So each FIFO is created under a temporary name,
  opened ``O_RDWR`` by its rig thread (which makes the rig both a reader and a writer, so
  no open ever blocks and no data is lost when a prober opens and closes it), and only
  then renamed into place. A vanished capture FIFO is unlinked, so opening the device
  fails with ENOENT instead of hanging.
* The plugin fills a capture period with ONE ``read()`` of the infile; a short read leaves
  stale samples in the rest of the period. The feeder therefore writes whole blocks
  atomically (at most ``PIPE_BUF`` bytes) and the reader's period must divide the feeder
  block (PortAudio uses ``frames_per_buffer`` as the period: 10 ms blocks at both ends).
* Past the end of a regular ``infile`` capture returns stale data, not silence: the file
  capture device is padded with silence. Reopening a stream restarts the file.
* The playback plugin writes to its ``file`` only once more than one ALSA buffer is
  pending, and PortAudio primes the buffer with silence at start: the recording begins
  with that silence, and a sample reaches the recorder about one buffer after PortAudio
  took it. The FIFO itself holds :attr:`FifoRecorder.pipe_bytes` more (the rig shrinks it
  to one page), which is the rig's equivalent of a hardware buffer.
* Vanishing devices leave the config: the rig rewrites it atomically, alsa-lib reloads a
  changed config on the next ``snd_pcm_open`` and PortAudio's device list changes at the
  next ``Pa_Initialize``, as when a USB device is unplugged. (Removing only the FIFO is not
  enough for playback: alsa-lib 1.2.8 ignores a failed open of the output ``file`` and
  fails later with EBADF.) The output FIFO still lives in its own directory, removed on
  vanish, so nothing can silently create a regular file in its place.
* PortAudio cannot cancel its callback thread while it is inside ALSA, and a capture
  thread waiting on an empty FIFO is exactly that: ``Pa_CloseStream`` on a frozen or
  vanished mic waits until the feeder writes again (``unfreeze()``, or ``reappear()``,
  which releases readers of the old FIFO with one block of silence). Real drivers wait
  in ``poll()``, where PortAudio can cancel; ``AudioEngine.stop()`` never waits for it.

Measuring *when* something played (barge-in tests): positions are exact, times are not.
``AudioEngine.played_samples_24k`` read at the press says how much had been handed to the
device; the recording starts with PortAudio's priming silence (find the first non-zero
sample of a clip that starts non-zero), so ``recording[lead + handed + one period:]``
must be silent. :meth:`FifoRecorder.time_of_sample` / :meth:`FifoRecorder.samples_played_by`
convert to wall-clock time; they include the FIFO (``pipe_bytes``, 85 ms at 24 kHz) and
one ALSA buffer of latency, like a real sound card's buffer.

Threads and files are cleaned up by :meth:`AlsaRig.stop` (also on ``with`` exit). Stop the
audio streams *before* stopping the rig: closing a FIFO under a blocked reader gives it
end-of-file, and ALSA then returns stale data at full speed.
"""

from __future__ import annotations

import array
import bisect
import collections
import contextlib
import errno
import fcntl
import logging
import os
import select
import shutil
import tempfile
import termios
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

SAMPLE_WIDTH_BYTES = 2  # S16_LE mono everywhere
DEFAULT_BLOCK_MS = 10
_PIPE_BUF = select.PIPE_BUF  # writes up to this size are atomic
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
_LOG_MAXLEN = 500_000  # per device: ~80 minutes of 10 ms blocks
_NO_CONVERTER = "edge_agent_rig_no_converter"  # a rate converter that does not exist
_THREAD_JOIN_S = 2.0

AudioSource = np.ndarray | bytes | bytearray | memoryview | str | os.PathLike


def load_pcm(source: AudioSource, rate_hz: int | None = None) -> bytes:
    """S16_LE mono bytes from an int16 array, raw bytes, a ``.wav`` or a raw file.

    A ``.wav`` must be 16-bit mono, and at ``rate_hz`` when that is given: the rig never
    converts, so a mismatch is an error rather than a silent change of pitch.
    """
    if isinstance(source, np.ndarray):
        if source.dtype != np.int16 or source.ndim != 1:
            raise ValueError(f"need a 1-D int16 array, got {source.dtype} {source.shape}")
        return source.astype("<i2", copy=False).tobytes()
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        path = Path(source)
        if path.suffix.lower() == ".wav":
            with wave.open(str(path), "rb") as wav:
                if wav.getsampwidth() != SAMPLE_WIDTH_BYTES or wav.getnchannels() != 1:
                    raise ValueError(f"{path}: need 16-bit mono")
                if rate_hz is not None and wav.getframerate() != rate_hz:
                    raise ValueError(f"{path}: {wav.getframerate()} Hz, device is {rate_hz} Hz")
                return wav.readframes(wav.getnframes())
        data = path.read_bytes()
    if len(data) % SAMPLE_WIDTH_BYTES:
        raise ValueError("odd number of bytes: not S16_LE samples")
    return data


def _fionread(fd: int) -> int:
    """Bytes waiting in a pipe (works on either end on Linux)."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf, True)
    return buf[0]


def _make_fifo(path: Path, pipe_bytes: int | None = None) -> int:
    """Create a FIFO at ``path`` already held open O_RDWR, so nobody's open() blocks on it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.mkfifo(tmp, 0o600)
    fd = os.open(tmp, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    if pipe_bytes is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, _F_SETPIPE_SZ, pipe_bytes)
    os.rename(tmp, path)
    return fd


@dataclass(frozen=True)
class FedBlock:
    """One block written into a capture FIFO: when, where in the stream, and what."""

    time: float  # time.monotonic() right after the write
    start_sample: int  # index of its first sample in everything this feeder has fed
    samples: int
    source_samples: int  # how many of them came from loaded audio (the rest is silence)


class _RigThread:
    """A daemon thread with a stop event; every wait in the loop is on that event."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._stop_evt = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._present = True
        self._on_presence_change: Callable[[], None] | None = None  # set by the rig

    @property
    def present(self) -> bool:
        return self._present

    def _presence_changed(self) -> None:
        if self._on_presence_change is not None:
            self._on_presence_change()

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._guarded, name=f"rig-{self.name}", daemon=True)
        self._thread.start()

    def _guarded(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # surfaced by check(); a rig thread must not die silently
            logger.exception("rig thread %s failed", self.name)
            self._failure = exc

    def _run(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _stop_thread(self) -> None:
        self._stop_evt.set()
        if self._thread is not None:
            self._thread.join(_THREAD_JOIN_S)
            if self._thread.is_alive():
                logger.error("rig thread %s did not stop within %.1f s", self.name, _THREAD_JOIN_S)

    def check(self) -> None:
        """Raise if the rig thread died (tests call this to fail loudly, not hang)."""
        if self._failure is not None:
            raise RuntimeError(f"rig thread {self.name} failed") from self._failure


class FifoFeeder(_RigThread):
    """Feeds a capture FIFO in real time, one block per ``block_ms``, silence when idle.

    ``load()`` queues audio; once it is used up the feeder writes silence, so the device
    keeps delivering like a real mic. At most ``max_backlog_blocks`` unread blocks stay in
    the FIFO: while nobody reads (stream opened but not started, or a slow reader) the
    feeder holds its position instead of running ahead, so no loaded audio is ever lost
    and a newly started stream hears at most that much old audio.
    """

    def __init__(
        self,
        name: str,
        path: Path,
        rate_hz: int,
        block_ms: int = DEFAULT_BLOCK_MS,
        max_backlog_blocks: int = 2,
    ) -> None:
        super().__init__(name)
        self.path = path
        self.rate_hz = rate_hz
        self.block_samples = rate_hz * block_ms // 1000
        self.block_bytes = self.block_samples * SAMPLE_WIDTH_BYTES
        if self.block_samples <= 0 or self.block_bytes > _PIPE_BUF:
            raise ValueError(f"block of {self.block_samples} samples cannot be written atomically")
        self.block_s = self.block_samples / rate_hz
        self.max_backlog_bytes = max_backlog_blocks * self.block_bytes
        self._pending = bytearray()
        self._fd: int | None = None
        self._graveyard: list[int] = []  # FIFOs of a vanished device, kept open (see vanish)
        self._frozen = False
        self._fed_samples = 0
        self._fed_source_samples = 0
        self._log: collections.deque[FedBlock] = collections.deque(maxlen=_LOG_MAXLEN)
        self._fed_cond = threading.Condition(self._lock)

    # ------------------------------------------------------------------ control

    def load(self, source: AudioSource) -> int:
        """Queue audio (int16 array, bytes, .wav or raw file) to feed after what is queued."""
        data = load_pcm(source, self.rate_hz)
        with self._lock:
            self._pending += data
        return len(data) // SAMPLE_WIDTH_BYTES

    def freeze(self) -> None:
        """Stop feeding but keep the FIFO open: readers block, like a mic that went dead."""
        with self._lock:
            self._frozen = True

    def unfreeze(self) -> None:
        with self._lock:
            self._frozen = False

    def vanish(self) -> None:
        """The device disappears: it leaves the ALSA config and its FIFO is unlinked.

        A reader that still has the old FIFO open keeps blocking (as on a dead handle); the
        old FIFO is only closed when the rig stops, because closing it would hand that
        reader end-of-file and ALSA would then return stale data at full speed.
        """
        with self._lock:
            self._present = False
        self._presence_changed()
        with self._lock:
            if self._fd is not None:
                self._graveyard.append(self._fd)
                self._fd = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        logger.info("rig: capture device %s vanished", self.name)

    def reappear(self) -> None:
        """The device comes back (a new FIFO); feeding resumes where it stopped.

        A reader still blocked on the old FIFO gets one block of silence, so a
        ``Pa_CloseStream`` waiting for it can finish (PortAudio cannot cancel a thread
        inside ALSA); the old FIFO then stays open but empty until the rig stops.
        """
        with self._lock:
            self._present = True
            for fd in self._graveyard:
                with contextlib.suppress(OSError):
                    if _fionread(fd) == 0:
                        os.write(fd, bytes(self.block_bytes))
            if self._fd is None and self._thread is not None:
                self._fd = _make_fifo(self.path)
        self._presence_changed()
        logger.info("rig: capture device %s reappears", self.name)

    # ------------------------------------------------------------------ observe

    @property
    def frozen(self) -> bool:
        return self._frozen

    @property
    def fed_samples(self) -> int:
        """Samples written into the FIFO so far (loaded audio and silence)."""
        return self._fed_samples

    @property
    def fed_source_samples(self) -> int:
        """Samples of loaded audio written so far."""
        return self._fed_source_samples

    @property
    def pending_samples(self) -> int:
        """Loaded samples not yet written."""
        with self._lock:
            return len(self._pending) // SAMPLE_WIDTH_BYTES

    def fed_blocks(self) -> list[FedBlock]:
        with self._lock:
            return list(self._log)

    def time_of_sample(self, index: int) -> float | None:
        """When the block holding stream sample ``index`` was written (None: not yet)."""
        with self._lock:
            log = list(self._log)
        starts = [b.start_sample for b in log]
        i = bisect.bisect_right(starts, index) - 1
        if i < 0 or index >= log[i].start_sample + log[i].samples:
            return None
        return log[i].time

    def wait_fed(self, samples: int, timeout: float) -> bool:
        """Block until ``fed_samples >= samples`` (False on timeout)."""
        with self._fed_cond:
            return self._fed_cond.wait_for(lambda: self._fed_samples >= samples, timeout)

    def wait_source_fed(self, timeout: float) -> bool:
        """Block until all loaded audio has been written (False on timeout)."""
        with self._fed_cond:
            return self._fed_cond.wait_for(lambda: not self._pending, timeout)

    # ------------------------------------------------------------------ thread

    def _start(self) -> None:
        self._start_thread()

    def _stop(self) -> None:
        self._stop_thread()
        with self._lock:
            fds = [*self._graveyard, *([self._fd] if self._fd is not None else [])]
            self._graveyard.clear()
            self._fd = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _run(self) -> None:
        next_t: float | None = None
        while not self._stop_evt.is_set():
            with self._lock:
                frozen, present = self._frozen, self._present
                if present and self._fd is None:
                    self._fd = _make_fifo(self.path)
                fd = self._fd
            if not present or frozen or fd is None:
                next_t = None
                self._stop_evt.wait(self.block_s)
                continue
            now = time.monotonic()
            if next_t is None or next_t < now - 5 * self.block_s:
                next_t = now  # (re)start the clock; never burst to catch up after a stall
            if now < next_t:
                self._stop_evt.wait(next_t - now)
                continue
            if _fionread(fd) + self.block_bytes > self.max_backlog_bytes:
                next_t = now + self.block_s  # nobody is reading: hold, lose nothing
                continue
            self._write_block(fd)
            next_t += self.block_s

    def _write_block(self, fd: int) -> None:
        with self._lock:
            block = bytes(self._pending[: self.block_bytes])
            source_bytes = len(block)
            if source_bytes < self.block_bytes:
                block += bytes(self.block_bytes - source_bytes)
        try:
            os.write(fd, block)  # <= PIPE_BUF: all or nothing
        except BlockingIOError:
            return
        with self._fed_cond:
            del self._pending[:source_bytes]
            start = self._fed_samples
            self._fed_samples += self.block_samples
            self._fed_source_samples += source_bytes // SAMPLE_WIDTH_BYTES
            self._log.append(
                FedBlock(
                    time.monotonic(), start, self.block_samples, source_bytes // SAMPLE_WIDTH_BYTES
                )
            )
            self._fed_cond.notify_all()


class FifoRecorder(_RigThread):
    """Drains a playback FIFO at the sample rate into a regular file, logging when.

    Every drain is logged as ``(time.monotonic(), total bytes drained)``: the moment a
    sample left the FIFO is the moment the rig "played" it. Draining is paced (one block
    per ``block_ms``, no catch-up bursts), so the writer, i.e. PortAudio, is held to real
    time by the full FIFO, as by a real sound card.
    """

    def __init__(
        self,
        name: str,
        path: Path,
        out_path: Path,
        rate_hz: int,
        block_ms: int = DEFAULT_BLOCK_MS,
        pipe_bytes: int = 4096,
    ) -> None:
        super().__init__(name)
        self.path = path
        self.out_path = out_path
        self.rate_hz = rate_hz
        self.block_bytes = rate_hz * block_ms // 1000 * SAMPLE_WIDTH_BYTES
        self.block_s = block_ms / 1000
        self.requested_pipe_bytes = pipe_bytes
        self.pipe_bytes = pipe_bytes  # actual size, known once the FIFO exists
        self._fd: int | None = None
        self._out: object | None = None
        self._drained = 0
        self._log: collections.deque[tuple[float, int]] = collections.deque(maxlen=_LOG_MAXLEN)
        self._cond = threading.Condition(self._lock)

    # ------------------------------------------------------------------ control

    def vanish(self) -> None:
        """The speaker disappears: out of the ALSA config; FIFO and directory removed, so
        a stream still writing gets EPIPE and stops."""
        with self._lock:
            self._present = False
        self._presence_changed()
        with self._lock:
            fd, self._fd = self._fd, None
            shutil.rmtree(self.path.parent, ignore_errors=True)
        if fd is not None:
            os.close(fd)
        logger.info("rig: playback device %s vanished", self.name)

    def reappear(self) -> None:
        with self._lock:
            self._present = True
            if self._fd is None and self._thread is not None:
                self._fd = self._open_fifo()
        self._presence_changed()
        logger.info("rig: playback device %s reappears", self.name)

    # ------------------------------------------------------------------ observe

    @property
    def drained_bytes(self) -> int:
        return self._drained

    @property
    def drained_samples(self) -> int:
        return self._drained // SAMPLE_WIDTH_BYTES

    def drain_log(self) -> list[tuple[float, int]]:
        """``(monotonic time, total bytes drained)`` after every non-empty drain."""
        with self._lock:
            return list(self._log)

    def samples(self) -> np.ndarray:
        """Everything played so far, as int16."""
        with self._lock:
            n = self._drained - self._drained % SAMPLE_WIDTH_BYTES
        with open(self.out_path, "rb") as f:
            return np.frombuffer(f.read(n), dtype="<i2").astype(np.int16)

    def time_of_sample(self, index: int) -> float | None:
        """When stream sample ``index`` was drained, i.e. played (None: not yet)."""
        end = (index + 1) * SAMPLE_WIDTH_BYTES
        with self._lock:
            log = list(self._log)
        ends = [e for _, e in log]
        i = bisect.bisect_left(ends, end)
        return log[i][0] if i < len(log) else None

    def samples_played_by(self, t: float) -> int:
        """How many samples had been drained at monotonic time ``t``."""
        with self._lock:
            log = list(self._log)
        times = [tt for tt, _ in log]
        i = bisect.bisect_right(times, t) - 1
        return log[i][1] // SAMPLE_WIDTH_BYTES if i >= 0 else 0

    def wait_samples(self, samples: int, timeout: float) -> bool:
        """Block until ``drained_samples >= samples`` (False on timeout)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.drained_samples >= samples, timeout)

    # ------------------------------------------------------------------ thread

    def _start(self) -> None:
        self._out = open(self.out_path, "wb")  # noqa: SIM115 - closed in _stop
        self._start_thread()

    def _stop(self) -> None:
        self._stop_thread()
        with self._lock:
            fd, self._fd = self._fd, None
            shutil.rmtree(self.path.parent, ignore_errors=True)
        if fd is not None:
            os.close(fd)
        if self._out is not None:
            self._out.close()  # type: ignore[attr-defined]

    def _open_fifo(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = _make_fifo(self.path, self.requested_pipe_bytes)
        self.pipe_bytes = fcntl.fcntl(fd, _F_GETPIPE_SZ)
        return fd

    def _run(self) -> None:
        next_t: float | None = None
        credit = 0
        while not self._stop_evt.is_set():
            with self._lock:
                if self._present and self._fd is None:
                    self._fd = self._open_fifo()
                fd = self._fd
            if fd is None:
                next_t = None
                self._stop_evt.wait(self.block_s)
                continue
            now = time.monotonic()
            if next_t is None or next_t < now - 5 * self.block_s:
                next_t = now
            if now < next_t:
                self._stop_evt.wait(next_t - now)
                continue
            next_t += self.block_s
            credit = min(credit + self.block_bytes, 2 * self.block_bytes)
            try:
                data = os.read(fd, credit)
            except BlockingIOError:
                data = b""
            except OSError as exc:  # fd closed by vanish() between the lock and the read
                if exc.errno != errno.EBADF:
                    raise
                data = b""
            if not data:
                credit = min(credit, self.block_bytes)  # idle time earns no burst later
                continue
            credit -= len(data)
            self._out.write(data)  # type: ignore[attr-defined]
            self._out.flush()  # type: ignore[attr-defined]
            with self._cond:
                self._drained += len(data)
                self._log.append((time.monotonic(), self._drained))
                self._cond.notify_all()


@dataclass(frozen=True)
class DuplexDevice:
    """The two halves of a duplex rig device."""

    name: str
    feeder: FifoFeeder
    recorder: FifoRecorder

    def vanish(self) -> None:
        self.recorder.vanish()
        self.feeder.vanish()

    def reappear(self) -> None:
        self.feeder.reappear()
        self.recorder.reappear()


class AlsaRig:
    """Builds the ALSA config, owns the FIFO threads, sets ``ALSA_CONFIG_PATH``.

    Declare devices, then :meth:`start` (or ``with AlsaRig() as rig``): the config is
    written, FIFOs created, threads started and ``ALSA_CONFIG_PATH`` set in this process.
    Create ``pyaudio.PyAudio()`` only after that. :meth:`env` gives the environment for a
    subprocess. Devices cannot be added after :meth:`start`.
    """

    def __init__(self, workdir: str | os.PathLike | None = None, block_ms: int = DEFAULT_BLOCK_MS):
        self._workdir_arg = Path(workdir) if workdir is not None else None
        self.workdir: Path | None = None
        self.block_ms = block_ms
        self._owns_workdir = False
        self._entries: dict[str, str] = {}
        self._parts: dict[str, list[_RigThread]] = {}
        self._config_lock = threading.Lock()
        self._feeders: dict[str, FifoFeeder] = {}
        self._recorders: dict[str, FifoRecorder] = {}
        self._file_inputs: dict[str, bytes] = {}
        self._default_capture: str | None = None
        self._default_playback: str | None = None
        self._started = False
        self._prev_env: str | None = None
        self.config_path: Path | None = None

    # ------------------------------------------------------------------ declare

    def _check_new(self, name: str) -> None:
        if self._started:
            raise RuntimeError("add devices before start()")
        if not name.replace("_", "").isalnum() or name in ("default", "null"):
            raise ValueError(f"bad device name {name!r}")
        if name in self._entries:
            raise ValueError(f"device {name!r} already defined")

    def _dir(self) -> Path:
        if self.workdir is None:
            if self._workdir_arg is None:
                self.workdir = Path(tempfile.mkdtemp(prefix="edge-agent-alsa-"))
                self._owns_workdir = True
            else:
                self.workdir = self._workdir_arg
                self.workdir.mkdir(parents=True, exist_ok=True)
        return self.workdir

    @staticmethod
    def _q(value: str | Path) -> str:
        text = str(value)
        if '"' in text or "\\" in text:
            raise ValueError(f"path not usable in an ALSA config: {text}")
        return f'"{text}"'

    def _capture_pcm(self, infile: Path, only_rate_hz: int | None) -> str:
        pcm = (
            f"{{ type file slave.pcm {{ type null }} file {self._q(os.devnull)} "
            f"infile {self._q(infile)} format raw }}"
        )
        return self._fixed_rate(pcm, only_rate_hz)

    def _playback_pcm(self, outfile: Path, only_rate_hz: int | None) -> str:
        pcm = f"{{ type file slave.pcm {{ type null }} file {self._q(outfile)} format raw }}"
        return self._fixed_rate(pcm, only_rate_hz)

    def _fixed_rate(self, pcm: str, only_rate_hz: int | None) -> str:
        if only_rate_hz is None:
            return pcm
        return (
            f"{{ type plug slave {{ pcm {pcm} rate {int(only_rate_hz)} }} "
            f'rate_converter "{_NO_CONVERTER}" }}'
        )

    def add_fifo_capture(
        self,
        name: str,
        rate_hz: int = 16000,
        *,
        source: AudioSource | None = None,
        only_rate_hz: int | None = None,
        max_backlog_blocks: int = 2,
    ) -> FifoFeeder:
        """A real-time mic fed at ``rate_hz`` (the rate the reader must open it at)."""
        self._check_new(name)
        if only_rate_hz is not None and only_rate_hz != rate_hz:
            raise ValueError("a fixed-rate device is fed at its fixed rate")
        path = self._dir() / f"{name}.in.fifo"
        feeder = FifoFeeder(name, path, rate_hz, self.block_ms, max_backlog_blocks)
        if source is not None:
            feeder.load(source)
        self._entries[name] = f"{{ type asym capture.pcm {self._capture_pcm(path, only_rate_hz)} }}"
        self._feeders[name] = feeder
        self._register(name, feeder)
        return feeder

    def add_file_capture(
        self,
        name: str,
        source: AudioSource,
        *,
        rate_hz: int | None = None,
        pad_s: float = 1.0,
        only_rate_hz: int | None = None,
    ) -> Path:
        """A mic read as fast as asked, from ``source`` then ``pad_s`` of silence.

        ``rate_hz`` (used only to size the padding, and to check a .wav) defaults to 16 kHz.
        Past the padding ALSA returns stale data: read no further.
        """
        self._check_new(name)
        rate = rate_hz or only_rate_hz or 16000
        data = load_pcm(source, rate)
        path = self._dir() / f"{name}.in.raw"
        self._file_inputs[name] = data + bytes(int(pad_s * rate) * SAMPLE_WIDTH_BYTES)
        self._entries[name] = f"{{ type asym capture.pcm {self._capture_pcm(path, only_rate_hz)} }}"
        return path

    def add_fifo_playback(
        self,
        name: str,
        rate_hz: int = 24000,
        *,
        only_rate_hz: int | None = None,
        pipe_bytes: int = 4096,
    ) -> FifoRecorder:
        """A real-time speaker drained at ``rate_hz`` into ``<workdir>/<name>.out.raw``."""
        self._check_new(name)
        if only_rate_hz is not None and only_rate_hz != rate_hz:
            raise ValueError("a fixed-rate device is drained at its fixed rate")
        base = self._dir()
        fifo = base / f"{name}.out.d" / "out.fifo"
        recorder = FifoRecorder(
            name, fifo, base / f"{name}.out.raw", rate_hz, self.block_ms, pipe_bytes
        )
        self._entries[name] = (
            f"{{ type asym playback.pcm {self._playback_pcm(fifo, only_rate_hz)} }}"
        )
        self._recorders[name] = recorder
        self._register(name, recorder)
        return recorder

    def add_duplex(
        self,
        name: str,
        rate_hz: int = 48000,
        *,
        only_rate_hz: int | None = None,
        source: AudioSource | None = None,
        pipe_bytes: int = 4096,
        max_backlog_blocks: int = 2,
    ) -> DuplexDevice:
        """Capture and playback in one pcm (``type asym``), both at ``rate_hz``."""
        self._check_new(name)
        if only_rate_hz is not None and only_rate_hz != rate_hz:
            raise ValueError("a fixed-rate device runs at its fixed rate")
        base = self._dir()
        in_path = base / f"{name}.in.fifo"
        fifo = base / f"{name}.out.d" / "out.fifo"
        feeder = FifoFeeder(name, in_path, rate_hz, self.block_ms, max_backlog_blocks)
        if source is not None:
            feeder.load(source)
        recorder = FifoRecorder(
            name, fifo, base / f"{name}.out.raw", rate_hz, self.block_ms, pipe_bytes
        )
        self._entries[name] = (
            f"{{ type asym capture.pcm {self._capture_pcm(in_path, only_rate_hz)} "
            f"playback.pcm {self._playback_pcm(fifo, only_rate_hz)} }}"
        )
        self._feeders[name] = feeder
        self._recorders[name] = recorder
        self._register(name, feeder, recorder)
        return DuplexDevice(name, feeder, recorder)

    def _register(self, name: str, *parts: _RigThread) -> None:
        self._parts[name] = list(parts)
        for part in parts:
            part._on_presence_change = self._write_config

    def set_default(self, capture: str | None = None, playback: str | None = None) -> None:
        """Make ``default`` point at rig devices (otherwise it is a null device)."""
        for n in (capture, playback):
            if n is not None and n not in self._entries:
                raise ValueError(f"unknown device {n!r}")
        self._default_capture, self._default_playback = capture, playback

    # ------------------------------------------------------------------ run

    def config_text(self) -> str:
        """The ALSA configuration this rig writes."""
        lines = ["# written by edge_agent_devkit.rig.alsa_rig"]
        for name, pcm in self._entries.items():
            if all(part.present for part in self._parts.get(name, [])):
                lines.append(f"pcm.{name} {pcm}")  # a vanished device is left out
        cap = f'"{self._default_capture}"' if self._default_capture else "{ type null }"
        play = f'"{self._default_playback}"' if self._default_playback else "{ type null }"
        lines.append(f"pcm.!default {{ type asym capture.pcm {cap} playback.pcm {play} }}")
        return "\n".join(lines) + "\n"

    def start(self) -> AlsaRig:
        if self._started:
            return self
        base = self._dir()
        for name, data in self._file_inputs.items():
            (base / f"{name}.in.raw").write_bytes(data)
        self.config_path = base / "asound.conf"
        self._started = True
        self._write_config()
        try:
            for feeder in self._feeders.values():
                feeder._start()
            for recorder in self._recorders.values():
                recorder._start()
            self._wait_fifos_ready()
        except BaseException:
            self.stop()
            raise
        self._prev_env = os.environ.get("ALSA_CONFIG_PATH")
        os.environ["ALSA_CONFIG_PATH"] = str(self.config_path)
        logger.debug("rig: ALSA config %s", self.config_path)
        return self

    def _write_config(self) -> None:
        """(Re)write the config atomically: alsa-lib reloads it when the file changes, so
        the next ``Pa_Initialize`` (and every ``snd_pcm_open``) sees devices come and go."""
        if not self._started or self.config_path is None:
            return
        with self._config_lock:
            tmp = self.config_path.with_name(f".{self.config_path.name}.tmp")
            tmp.write_text(self.config_text())
            os.replace(tmp, self.config_path)

    def _wait_fifos_ready(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        paths = [f.path for f in self._feeders.values()] + [
            r.path for r in self._recorders.values()
        ]
        while not all(p.exists() for p in paths):
            for t in [*self._feeders.values(), *self._recorders.values()]:
                t.check()
            if time.monotonic() > deadline:
                raise TimeoutError("rig FIFOs not created")
            time.sleep(0.005)

    def stop(self) -> None:
        """Stop all threads, close and remove FIFOs, restore ``ALSA_CONFIG_PATH``."""
        if not self._started:
            return
        self._started = False
        for feeder in self._feeders.values():
            feeder._stop()
        for recorder in self._recorders.values():
            recorder._stop()
        if self.config_path is not None and os.environ.get("ALSA_CONFIG_PATH") == str(
            self.config_path
        ):
            if self._prev_env is None:
                os.environ.pop("ALSA_CONFIG_PATH", None)
            else:
                os.environ["ALSA_CONFIG_PATH"] = self._prev_env
        if self._owns_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment for a subprocess that should use this rig."""
        if self.config_path is None:
            raise RuntimeError("start() the rig first")
        env = dict(os.environ if base is None else base)
        env["ALSA_CONFIG_PATH"] = str(self.config_path)
        return env

    def feeder(self, name: str) -> FifoFeeder:
        return self._feeders[name]

    def recorder(self, name: str) -> FifoRecorder:
        return self._recorders[name]

    def check(self) -> None:
        """Raise if any rig thread died."""
        for t in [*self._feeders.values(), *self._recorders.values()]:
            t.check()

    def __enter__(self) -> AlsaRig:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

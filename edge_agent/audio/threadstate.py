"""Keep the Python thread state of PortAudio's callback thread alive between callbacks.

Why: PyAudio enters Python from PortAudio's thread with ``PyGILState_Ensure`` and leaves with
``PyGILState_Release``. On a thread Python did not create, that first Ensure creates a thread
state and the matching Release destroys it, so every callback (100 a second with 10 ms
periods, all day long while the device idles) builds and tears down a ``PyThreadState``,
frame stack included. Measured over the ALSA rig (duplex, 48 kHz, 10 ms): a callback that
does nothing costs 0.75-1.1 % of a core that way and 0.45-0.55 % with the state kept.

How: one extra, nested ``PyGILState_Ensure`` taken inside a callback (documented C API, called
through ``ctypes.pythonapi`` with the GIL held) keeps the count above zero, so PyAudio's
Release then only lets go of the GIL. It is given back by :meth:`ThreadStatePins.unpin` from
the stream's last callback (the one that answers ``paAbort``), and the state dies with its
thread as before. A stream that ends without such a callback (a device that vanished, a
callback thread stuck in the driver when the stream is closed) leaves its one thread state
behind: a few kilobytes, once per such stream.
"""

from __future__ import annotations

import ctypes
import logging
import threading

logger = logging.getLogger(__name__)

try:
    _ensure = ctypes.pythonapi.PyGILState_Ensure
    _ensure.argtypes = []
    _ensure.restype = ctypes.c_int
    _release = ctypes.pythonapi.PyGILState_Release
    _release.argtypes = [ctypes.c_int]
    _release.restype = None
    _AVAILABLE = True
except (AttributeError, OSError):  # not CPython: callbacks simply run unpinned
    _AVAILABLE = False


class ThreadStatePins:
    """The callback threads of one stream session whose thread state is being kept."""

    def __init__(self) -> None:
        self._pins: dict[int, int] = {}  # thread ident -> what PyGILState_Ensure returned
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._released.set()
        self.enabled = _AVAILABLE

    def pin(self) -> None:
        """In a callback: keep this thread's state from now on (cheap once pinned)."""
        ident = threading.get_ident()
        if not self.enabled or ident in self._pins:
            return
        with self._lock:
            self._pins[ident] = _ensure()
            self._released.clear()

    def unpin(self) -> None:
        """In the last callback of this thread: give the state back (it dies as the
        callback returns, as it would without pinning)."""
        with self._lock:
            state = self._pins.pop(threading.get_ident(), None)
            if state is not None:
                _release(state)
            if not self._pins:
                self._released.set()

    @property
    def pinned(self) -> int:
        return len(self._pins)

    def wait_released(self, timeout_s: float) -> bool:
        """Wait for every pinned thread to unpin (its next callback sees the stream
        closing); False when one did not within ``timeout_s`` (its state is left)."""
        if self._released.wait(timeout_s):
            return True
        logger.debug("audio callback thread did not return before close: its state is left")
        return False

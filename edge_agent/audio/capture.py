"""Capture hand-off: sound card thread -> bounded queue -> ears worker -> events callback.

The audio engine calls :meth:`CapturePipeline.on_block` on PortAudio's thread, which must
never block; the listening pipeline (echo cancellation, wake word, VAD) takes milliseconds
per block and runs on the worker thread here instead, and its events go to ``on_events``
(the daemon passes a function that hands them to the event loop with
``loop.call_soon_threadsafe``). The daemon and the idle-CPU bench both run this class, so
the bench measures the path the appliance runs.

Overflow policy: the queue holds ``max_blocks`` blocks (5 s at the default 500 x 10 ms).
When the worker falls that far behind, the OLDEST block is dropped and counted in
:attr:`CapturePipeline.dropped_blocks`: fresh audio matters more than stale audio to a wake
word and to a live conversation. A block that makes ``ears.process`` raise is dropped and
counted in :attr:`CapturePipeline.ears_failures`; only the first failure is logged (with its
traceback), so a broken model cannot flood the journal at 100 blocks a second.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)

Block = tuple[np.ndarray, np.ndarray | None, int]


class Listener(Protocol):
    """What the worker feeds: :class:`edge_agent.audio.ears.Ears` in production."""

    def process(self, mic: np.ndarray, ref: np.ndarray | None, sample_pos: int) -> list[Any]: ...


EventsCallback = Callable[[list[Any]], None]
"""``on_events(events)``: called on the worker thread with each non-empty result."""


class CapturePipeline:
    """A bounded drop-oldest queue and one worker thread running ``ears.process``.

    The constructor starts nothing; :meth:`start` needs an ears object (given here or by
    :meth:`set_ears`). Counters are written by one thread each and read anywhere.
    """

    def __init__(
        self,
        ears: Listener | None,
        on_events: EventsCallback,
        *,
        max_blocks: int = 500,
        join_timeout_s: float = 0.5,
        poll_s: float = 0.2,
        thread_name: str = "ears",
    ) -> None:
        if max_blocks < 1:
            raise ValueError("max_blocks must be >= 1")
        self._ears = ears
        self._on_events = on_events
        self._blocks: queue.Queue[Block] = queue.Queue(maxsize=max_blocks)
        self.max_blocks = max_blocks
        self.join_timeout_s = join_timeout_s
        self._poll_s = poll_s
        self._thread_name = thread_name
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.muted = False
        """While True nothing is processed (nothing heard, nothing sent); the capture
        position still advances, so an uplink opened after unmuting starts at "now"."""
        self.capture_pos = 0
        """16 kHz sample position just after the last block the worker took (muted or not)."""
        self.dropped_blocks = 0  # queue overflow (callback thread)
        self.processed_blocks = 0  # handed to ears.process (worker thread)
        self.ears_failures = 0  # ears.process raised (worker thread)
        self.handoff_failures = 0  # on_events raised (worker thread)

    @property
    def ears(self) -> Listener | None:
        return self._ears

    def set_ears(self, ears: Listener) -> None:
        """Use new ears from the next block on (a reload built them); the block being
        processed, if any, finishes on the old ones."""
        self._ears = ears

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def worker_thread_id(self) -> int | None:
        """The worker's native thread id (the bench accounts its CPU time separately)."""
        return self._thread.native_id if self._thread is not None else None

    @property
    def queued_blocks(self) -> int:
        return self._blocks.qsize()

    def start(self) -> None:
        """Start the worker thread (no-op while it runs)."""
        if self._ears is None:
            raise RuntimeError("CapturePipeline.start needs ears")
        if self.running:
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._work, args=(self._stop,), name=self._thread_name, daemon=True
        )
        self._thread.start()

    def stop(self) -> bool:
        """Stop the worker; waits at most ``join_timeout_s``. False when it is still inside
        ``ears.process`` then (it ends by itself after that block; the thread is a daemon)."""
        self._stop.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(self.join_timeout_s)
        if thread.is_alive():
            logger.warning(
                "ears worker still busy %.2f s after stop: leaving it to finish its block",
                self.join_timeout_s,
            )
            return False
        return True

    def on_block(self, mic: np.ndarray, ref: np.ndarray | None, pos: int) -> None:
        """Sound card thread: queue the block; never blocks; full -> drop the oldest."""
        block = (mic, ref, pos)
        try:
            self._blocks.put_nowait(block)
        except queue.Full:
            with contextlib.suppress(queue.Empty):
                self._blocks.get_nowait()
            self.dropped_blocks += 1
            with contextlib.suppress(queue.Full):
                self._blocks.put_nowait(block)

    def _work(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                mic, ref, pos = self._blocks.get(timeout=self._poll_s)
            except queue.Empty:
                continue
            self.capture_pos = pos + len(mic)
            ears = self._ears
            if self.muted or ears is None:
                continue  # muted: nothing is heard, nothing is sent
            self.processed_blocks += 1
            try:
                events = ears.process(mic, ref, pos)
            except Exception:
                self.ears_failures += 1
                if self.ears_failures == 1:  # once; the count is in `edge-agent status`
                    logger.exception("listening pipeline failed on a block (block dropped)")
                continue
            if events:
                try:
                    self._on_events(events)
                except Exception:
                    self.handoff_failures += 1
                    if self.handoff_failures == 1:
                        logger.exception("ears events could not be handed on (dropped)")

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

Coalescing (why the worker is not woken 100 times a second while the device idles): a
listener may say, through ``due_grid`` (``(phase, period)`` or None), that only blocks
reaching a position ``phase + k * period`` can make it report anything (the ears, while they
only listen for the wake word: the ends of the 80 ms wake-model frames). Other blocks wait
in the queue without waking the worker; the block that reaches such a position wakes it,
and the worker hands all contiguous waiting blocks with a silent reference over in ONE
``process`` call (at most ``max_coalesce`` blocks). Every event comes out at the same
capture position as block by block, and no later than the block where it is due; a
wake-up and a listener call per block is what is saved. A listener without ``due_grid``
(or with None) gets every block on its own, as it arrives. :meth:`on_block` returns the
pipeline itself, whose :attr:`hold_grid` the audio engine reads to hold back idle input
the same way (see :mod:`edge_agent.audio.streams`).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)

Block = tuple[np.ndarray, np.ndarray | None, int]


class Listener(Protocol):
    """What the worker feeds: :class:`edge_agent.audio.ears.Ears` in production."""

    def process(self, mic: np.ndarray, ref: np.ndarray | None, sample_pos: int) -> list[Any]: ...


Grid = tuple[int, int]


def _audible(ref: np.ndarray | None) -> bool:
    """A reference block with any playback in it is never merged with others: the ears
    switch echo handling per block, so it keeps the block boundaries it would have."""
    return ref is not None and np.count_nonzero(ref) > 0


def _due_grid(listener: Listener | None) -> Grid | None:
    """The listener's ``due_grid`` (optional: None when it has none)."""
    return getattr(listener, "due_grid", None)


def reaches_grid(grid: Grid, start: int, n: int) -> bool:
    """True when the span [start, start + n) reaches a position ``phase + k * period``
    (the span ends at or past it, and starts before it)."""
    phase, period = grid
    return (start + n - phase) // period != (start - phase) // period


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
        max_coalesce: int = 8,
    ) -> None:
        if max_blocks < 1:
            raise ValueError("max_blocks must be >= 1")
        if max_coalesce < 1:
            raise ValueError("max_coalesce must be >= 1")
        self._ears = ears
        self._on_events = on_events
        # deque append/popleft are atomic: the sound card thread appends, the worker pops;
        # the bell wakes the worker (it is rung only for blocks that are due).
        self._blocks: deque[Block] = deque()
        self._bell = threading.Event()
        self.max_blocks = max_blocks
        self.max_coalesce = max_coalesce
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
    def hold_grid(self) -> Grid | None:
        """The listener's ``due_grid`` (any thread): what the audio engine may hold back."""
        return None if self.muted else _due_grid(self._ears)

    @property
    def queued_blocks(self) -> int:
        return len(self._blocks)

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
        self._bell.set()
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

    def on_block(self, mic: np.ndarray, ref: np.ndarray | None, pos: int) -> CapturePipeline:
        """Sound card thread: queue the block; never blocks; full -> drop the oldest.

        The worker is woken only when the block is due (see the module docstring) or
        ``max_coalesce`` blocks wait. Returns the pipeline (its :attr:`hold_grid`)."""
        blocks = self._blocks
        if len(blocks) >= self.max_blocks:
            try:
                blocks.popleft()
                self.dropped_blocks += 1
            except IndexError:  # the worker took it meanwhile
                pass
        blocks.append((mic, ref, pos))
        grid = _due_grid(self._ears)
        if grid is None or len(blocks) >= self.max_coalesce or reaches_grid(grid, pos, len(mic)):
            self._bell.set()
        return self

    def _work(self, stop: threading.Event) -> None:
        blocks, bell = self._blocks, self._bell
        while not stop.is_set():
            if not bell.wait(self._poll_s):
                continue  # timed out: only a look at the stop flag; waiting blocks wait on
            bell.clear()  # before taking: a block queued from now on rings again
            while blocks and not stop.is_set():
                self._take(blocks)

    def _take(self, blocks: deque[Block]) -> None:
        """Hand the oldest block(s) to the ears: one, or a contiguous run when the ears
        coalesce (their ``due_grid`` is set). Pops before it looks: the sound card thread
        may drop the oldest block at any moment (a full queue)."""
        try:
            mic, ref, pos = blocks.popleft()
        except IndexError:  # dropped by the sound card thread meanwhile
            return
        taken = 1
        if blocks and _due_grid(self._ears) is not None and not _audible(ref):
            mics, refs, end = [mic], [ref], pos + len(mic)
            while taken < self.max_coalesce:
                try:
                    nxt = blocks.popleft()
                except IndexError:
                    break
                nxt_mic, nxt_ref, nxt_pos = nxt
                if nxt_pos != end or (nxt_ref is None) != (ref is None) or _audible(nxt_ref):
                    blocks.appendleft(nxt)  # it goes next, on its own terms
                    break
                mics.append(nxt_mic)
                refs.append(nxt_ref)
                end += len(nxt_mic)
                taken += 1
            if taken > 1:
                mic = np.concatenate(mics)
                ref = None if ref is None else np.concatenate(refs)
        self.capture_pos = pos + len(mic)
        ears = self._ears
        if self.muted or ears is None:
            return  # muted: nothing is heard, nothing is sent
        self.processed_blocks += taken
        try:
            events = ears.process(mic, ref, pos)
        except Exception:
            self.ears_failures += 1
            if self.ears_failures == 1:  # once; the count is in `edge-agent status`
                logger.exception("listening pipeline failed on a block (block dropped)")
            return
        if events:
            try:
                self._on_events(events)
            except Exception:
                self.handoff_failures += 1
                if self.handoff_failures == 1:
                    logger.exception("ears events could not be handed on (dropped)")

"""Reply audio to the sound card, and the bookkeeping of when a reply has drained.

The machine needs a `PlaybackDrained` event when the last reply sample has been
written; only the sound card thread sees that moment. `output_source` (sound card
thread) notices it and hands it to the event loop; everything else runs on the loop.
The flags are plain attributes: the loop writes them, the sound card thread reads them
and sets `_drain_reported` once per reply before it hands the drain to the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import numpy as np

from edge_agent.config import Config
from edge_agent.core.cues import CueMixer
from edge_agent.core.jitter import JitterBuffer

log = logging.getLogger(__name__)


class ReplyPlayback:
    """The jitter buffer and the cue mixer behind the speaker, and the reply's drain."""

    def __init__(self, cfg: Config, on_drained: Callable[[], None]) -> None:
        self.jitter = JitterBuffer(
            prefill_ms=cfg.playback.prefill_ms,
            max_ms=cfg.playback.max_buffer_ms,
            fade_ms=cfg.playback.fade_ms,
            gain=cfg.audio.volume_percent / 100,
        )
        self.cues = CueMixer(cue_volume=cfg.audio.cue_volume_percent / 100)
        self.loop: asyncio.AbstractEventLoop | None = None  # set when the daemon runs
        self.playing = False  # a reply was pushed and has not drained or been flushed
        self._on_drained = on_drained
        self._drain_reported = True
        self._first_chunk_at: float | None = None

    def output_source(self, n: int) -> np.ndarray:
        """Sound card thread: reply audio plus cues; notices when the reply has drained."""
        block = self.cues.mix_into(self.jitter.pull(n))
        if self._first_chunk_at is not None and self.jitter.last_pull_was_audio:
            arrived, self._first_chunk_at = self._first_chunk_at, None
            written = time.monotonic()
            loop = self.loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._log_first_audio, arrived, written)
        if self.playing and self.jitter.is_idle and not self._drain_reported:
            self._drain_reported = True
            loop = self.loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._drained)
        return block

    def output_quiet(self) -> bool:
        """Sound card thread: the next pull would be silence and change nothing (no reply
        pushed, fading or draining, no cue): the idle sound card callback then skips it."""
        return (
            self._drain_reported
            and self._first_chunk_at is None
            and self.jitter.is_quiet
            and not self.cues.is_playing
        )

    def push(self, pcm24k: bytes) -> None:
        """Loop: a chunk of the reply; the first one of a reply starts the latency clock."""
        if not self.playing:
            self._first_chunk_at = time.monotonic()
        self.jitter.push(pcm24k)
        self.playing = True
        self._drain_reported = False

    def turn_completed(self) -> None:
        """Loop: no more audio for this reply; already idle means already drained."""
        self.jitter.mark_turn_complete()
        if self.jitter.is_idle:
            self._drain_reported = True

    def flush(self) -> int:
        """Loop: drop the rest of the reply (barge-in); returns the samples dropped."""
        discarded = self.jitter.clear()
        self.playing = False
        self._drain_reported = True
        return discarded

    def _drained(self) -> None:
        self.playing = False
        self._on_drained()

    @staticmethod
    def _log_first_audio(arrived: float, written: float) -> None:
        log.info(
            "reply audio: first chunk arrived t=%.6f, first sample written t=%.6f (%.1f ms)",
            arrived,
            written,
            1000 * (written - arrived),
        )

"""Jitter buffer between the Live session (producer) and the speaker callback (consumer).

The model's audio arrives in bursts, usually faster than real time, on the asyncio thread
(:meth:`JitterBuffer.push`); the PortAudio callback drains it at a steady rate
(:meth:`JitterBuffer.pull`). The buffer smooths the two, never blocks, never clicks, and
counts everything that went wrong so the daemon can report it.

Policies (each one chosen for a *spoken reply*):

* **Prefill.** Playback starts once ``prefill_ms`` is buffered, or earlier when the turn is
  complete (a reply shorter than the prefill must still play).
* **Underrun.** If the buffer runs dry mid-turn, the output fades from the last sample level
  to zero over ``fade_ms`` and then plays silence; the underrun is counted once and the
  silent samples are counted in ``underrun_samples``. Playback then *re-buffers*: it waits
  for the full prefill again (or the end of the turn) before resuming with a fade-in. A
  starving network tends to starve again, so rebuilding the cushion trades one slightly
  longer gap for fewer stutters. Running dry after :meth:`mark_turn_complete` is the
  natural end of the reply and is not an underrun.
* **Overflow: drop the newest, and keep dropping until the turn ends.** Dropping the oldest
  unplayed audio would cut out the middle of a sentence the user is about to hear; dropping
  only what does not fit *now* would splice audio from far later in the reply onto the
  current position. So when a push does not fit, the part that fits is kept, the rest is
  dropped and the buffer *latches*: every later push is dropped (and counted) until
  :meth:`mark_turn_complete` or :meth:`clear`. The listener hears a contiguous prefix of the
  reply that ends with a normal fade-out. With the default two-minute bound this only
  happens if something upstream has gone badly wrong.
* **Clear (barge-in).** Everything buffered is discarded at once; the next pull fades out
  from the last played sample level over ``fade_ms`` and then plays silence.
* **Fades.** Every transition between silence and audio is ramped over ``fade_ms``: fade-in at
  start and resume, fade-out (from the last emitted level) at underrun, natural end and
  clear. Audio never resumes while a fade-out is still running, so the two never overlap and
  a resume always starts from zero. ``fade_ms=0`` turns fades off (hard cuts).

Thread safety: one ``threading.Lock`` guards all state; it is held only for array copies,
never for I/O, logging or allocation-heavy work, so the audio callback never waits long.
``pull`` does not log (it runs on the audio thread); ``push`` logs once per overflow event.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

_INT16_MIN = -32768
_INT16_MAX = 32767


@dataclass(frozen=True)
class JitterStats:
    """A consistent copy of the counters, taken under the lock (all counts in samples)."""

    sample_rate_hz: int
    buffered_samples: int
    pushed_samples: int
    played_samples: int
    dropped_samples: int
    cleared_samples: int
    underruns: int
    underrun_samples: int
    is_playing: bool
    turn_complete: bool

    @property
    def buffered_ms(self) -> float:
        return 1000.0 * self.buffered_samples / self.sample_rate_hz


class JitterBuffer:
    """Bounded FIFO of s16le mono model audio with prefill, fades, barge-in and counters.

    Invariant (checked by the tests): ``pushed == played + buffered + dropped + cleared``.
    """

    def __init__(
        self,
        *,
        sample_rate_hz: int = 24_000,
        prefill_ms: int = 120,
        max_ms: int = 120_000,
        fade_ms: int = 5,
        gain: float = 1.0,
    ) -> None:
        if sample_rate_hz <= 0:
            raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
        if max_ms <= 0:
            raise ValueError(f"max_ms must be positive, got {max_ms}")
        if prefill_ms < 0 or fade_ms < 0:
            raise ValueError("prefill_ms and fade_ms must not be negative")
        self._sample_rate_hz = sample_rate_hz
        self._max_samples = max(1, sample_rate_hz * max_ms // 1000)
        # A prefill larger than the bound could never be reached: clamp it.
        self._prefill_samples = min(sample_rate_hz * prefill_ms // 1000, self._max_samples)
        self._fade_samples = sample_rate_hz * fade_ms // 1000
        fade = self._fade_samples
        # Fade-in gains (1/F .. 1) and fade-out gains ((F-1)/F .. 0): both move by 1/F a step,
        # so a jump from silence or to silence is at most 1/F of the level.
        self._ramp_up = np.arange(1, fade + 1, dtype=np.float32) / max(fade, 1)
        self._ramp_down = np.arange(fade - 1, -1, -1, dtype=np.float32) / max(fade, 1)
        self._gain = self._check_gain(gain)

        self._lock = threading.Lock()
        self._chunks: collections.deque[np.ndarray] = collections.deque()
        self._head = 0  # samples of _chunks[0] already played
        self._buffered = 0
        self._carry = b""  # stray byte of an odd-length push, completed by the next push

        self._playing = False  # handing out buffered audio (past the prefill)
        self._rebuffering = False  # ran dry mid-turn; waiting for the prefill again
        self._turn_complete = False
        self._overflow_latched = False
        self._fade_in_pos = self._fade_samples  # >= fade means "no fade-in running"
        self._tail_from = 0.0  # level the running fade-out starts from
        self._tail_remaining = 0  # samples of fade-out still to emit
        self._last_out = 0  # last sample handed out (after gain and fades)
        self._last_pull_was_audio = False

        self._pushed = 0
        self._played = 0
        self._dropped = 0
        self._cleared = 0
        self._underruns = 0
        self._underrun_samples = 0

    # ------------------------------------------------------------------ producer side

    def push(self, pcm: bytes | bytearray | memoryview) -> int:
        """Append s16le model audio; return how many samples were dropped by the overflow policy.

        An odd byte count leaves one stray byte that is completed by the next push. A
        non-empty push also starts a new turn if the previous one was marked complete.
        """
        raw = bytes(pcm)
        if not raw:
            return 0
        with self._lock:
            self._turn_complete = False
            if self._carry:
                raw = self._carry + raw
                self._carry = b""
            if len(raw) % 2:
                self._carry = raw[-1:]
                raw = raw[:-1]
            count = len(raw) // 2
            if count == 0:
                return 0
            self._pushed += count
            if self._overflow_latched:
                self._dropped += count
                return count
            space = self._max_samples - self._buffered
            keep = min(count, space)
            dropped = count - keep
            if keep:
                # Copy: the caller may reuse its buffer, and a slice of a huge push must not
                # keep the whole push alive.
                samples = np.frombuffer(raw, dtype="<i2", count=keep).astype(np.int16)
                self._chunks.append(samples)
                self._buffered += keep
            if dropped:
                self._dropped += dropped
                self._overflow_latched = True
        if dropped:
            logger.warning(
                "playback buffer full (%d samples): dropping the rest of this reply "
                "(%d samples so far)",
                self._max_samples,
                dropped,
            )
        return dropped

    def mark_turn_complete(self) -> None:
        """The model's turn is over: play what is buffered even below the prefill; dry = the end."""
        with self._lock:
            self._turn_complete = True
            self._overflow_latched = False
            if self._buffered == 0:
                # Re-buffering for audio that will never come: it is over, not starving.
                self._rebuffering = False

    def clear(self) -> int:
        """Barge-in: discard everything buffered now; return how many samples were discarded.

        The next pull fades from the last played level to zero, then plays silence.
        """
        with self._lock:
            discarded = self._buffered
            self._chunks.clear()
            self._head = 0
            self._buffered = 0
            self._carry = b""
            self._cleared += discarded
            if self._playing or self._tail_remaining:
                self._start_tail()
            self._playing = False
            self._rebuffering = False
            self._turn_complete = False
            self._overflow_latched = False
            self._fade_in_pos = self._fade_samples
            return discarded

    # ------------------------------------------------------------------ consumer side

    def pull(self, n: int) -> np.ndarray:
        """Return exactly ``n`` int16 samples: buffered audio, fades or silence; no I/O."""
        if n < 0:
            raise ValueError(f"pull size must not be negative, got {n}")
        out = np.zeros(n, dtype=np.int16)
        with self._lock:
            if not (self._buffered or self._playing or self._tail_remaining or self._rebuffering):
                # Idle (the device's usual state, 100 pulls a second): nothing buffered,
                # nothing fading out, no underrun being counted; what follows would only
                # return this silence.
                self._last_pull_was_audio = False
                return out
            pos = self._write_tail(out, 0)
            audio = 0
            if not self._playing and self._tail_remaining == 0 and self._ready_to_start():
                if self._rebuffering:
                    self._underrun_samples += pos
                    self._rebuffering = False
                self._playing = True
                self._fade_in_pos = 0
            audio_end = 0
            if self._playing and pos < n:
                audio = min(n - pos, self._buffered)
                if audio:
                    self._take_into(out, pos, audio)
                    self._shape(out, pos, pos + audio)
                    pos += audio
                    audio_end = pos
                    self._played += audio
                    self._last_out = int(out[pos - 1])
                if pos < n:
                    # Ran dry inside this pull: the natural end, or an underrun.
                    self._playing = False
                    if not self._turn_complete:
                        self._underruns += 1
                        self._rebuffering = True
                    self._start_tail()
                    pos = self._write_tail(out, pos)
            if self._rebuffering:
                self._underrun_samples += n - audio_end
            self._last_pull_was_audio = audio > 0
        return out

    # ------------------------------------------------------------------ properties

    @property
    def sample_rate_hz(self) -> int:
        return self._sample_rate_hz

    @property
    def prefill_samples(self) -> int:
        return self._prefill_samples

    @property
    def max_samples(self) -> int:
        return self._max_samples

    @property
    def gain(self) -> float:
        return self._gain

    @gain.setter
    def gain(self, value: float) -> None:
        """Change the playback gain; takes effect from the next pull (not after the backlog)."""
        checked = self._check_gain(value)
        with self._lock:
            self._gain = checked

    @property
    def buffered_samples(self) -> int:
        with self._lock:
            return self._buffered

    @property
    def pushed_samples(self) -> int:
        with self._lock:
            return self._pushed

    @property
    def played_samples(self) -> int:
        """Real model-audio samples handed out (silence and synthesised fade-outs excluded)."""
        with self._lock:
            return self._played

    @property
    def dropped_samples(self) -> int:
        with self._lock:
            return self._dropped

    @property
    def cleared_samples(self) -> int:
        with self._lock:
            return self._cleared

    @property
    def underruns(self) -> int:
        with self._lock:
            return self._underruns

    @property
    def underrun_samples(self) -> int:
        with self._lock:
            return self._underrun_samples

    @property
    def is_playing(self) -> bool:
        """True from the end of the prefill until the last fade-out sample has been handed out."""
        with self._lock:
            return self._playing or self._tail_remaining > 0

    @property
    def is_idle(self) -> bool:
        """Nothing buffered and nothing (not even a fade-out) being played: the speaker is done.

        After ``mark_turn_complete`` this is how the daemon learns the reply has finished.
        """
        with self._lock:
            return self._buffered == 0 and not self._playing and self._tail_remaining == 0

    @property
    def is_quiet(self) -> bool:
        """The next pull would return silence and change nothing (the idle fast path of
        ``pull``, already taken once): a sound card callback may skip it."""
        with self._lock:
            return not (
                self._buffered
                or self._playing
                or self._tail_remaining
                or self._rebuffering
                or self._last_pull_was_audio
            )

    @property
    def turn_complete(self) -> bool:
        with self._lock:
            return self._turn_complete

    @property
    def last_pull_was_audio(self) -> bool:
        """Whether the most recent pull contained at least one real model-audio sample."""
        with self._lock:
            return self._last_pull_was_audio

    def snapshot(self) -> JitterStats:
        with self._lock:
            return JitterStats(
                sample_rate_hz=self._sample_rate_hz,
                buffered_samples=self._buffered,
                pushed_samples=self._pushed,
                played_samples=self._played,
                dropped_samples=self._dropped,
                cleared_samples=self._cleared,
                underruns=self._underruns,
                underrun_samples=self._underrun_samples,
                is_playing=self._playing or self._tail_remaining > 0,
                turn_complete=self._turn_complete,
            )

    # ------------------------------------------------------------------ internals (lock held)

    @staticmethod
    def _check_gain(value: float) -> float:
        gain = float(value)
        if not np.isfinite(gain) or gain < 0.0:
            raise ValueError(f"gain must be a finite number >= 0, got {value!r}")
        return gain

    def _ready_to_start(self) -> bool:
        return self._buffered > 0 and (
            self._buffered >= self._prefill_samples or self._turn_complete
        )

    def _take_into(self, out: np.ndarray, pos: int, count: int) -> None:
        """Move ``count`` buffered samples (count <= buffered) into ``out[pos:]``."""
        self._buffered -= count
        while count:
            chunk = self._chunks[0]
            head = self._head
            k = min(len(chunk) - head, count)
            out[pos : pos + k] = chunk[head : head + k]
            pos += k
            count -= k
            if head + k == len(chunk):
                self._chunks.popleft()
                self._head = 0
            else:
                self._head = head + k

    def _shape(self, out: np.ndarray, start: int, end: int) -> None:
        """Apply gain and any running fade-in to ``out[start:end]`` in place."""
        fading = self._fade_in_pos < self._fade_samples
        if self._gain == 1.0 and not fading:
            return
        seg = out[start:end].astype(np.float32)
        if self._gain != 1.0:
            seg *= self._gain
        if fading:
            m = min(end - start, self._fade_samples - self._fade_in_pos)
            seg[:m] *= self._ramp_up[self._fade_in_pos : self._fade_in_pos + m]
            self._fade_in_pos += m
        np.clip(seg, _INT16_MIN, _INT16_MAX, out=seg)
        out[start:end] = seg

    def _start_tail(self) -> None:
        """Begin a fade-out from the last emitted level (nothing to do if it is already 0)."""
        if self._last_out == 0 or self._fade_samples == 0:
            self._tail_remaining = 0
            self._last_out = 0
            return
        self._tail_from = float(self._last_out)
        self._tail_remaining = self._fade_samples

    def _write_tail(self, out: np.ndarray, pos: int) -> int:
        """Emit as much of the running fade-out as fits from ``pos``; return the new position."""
        k = min(len(out) - pos, self._tail_remaining)
        if k <= 0:
            return pos
        first = self._fade_samples - self._tail_remaining
        out[pos : pos + k] = self._tail_from * self._ramp_down[first : first + k]
        self._tail_remaining -= k
        pos += k
        self._last_out = int(out[pos - 1])
        return pos

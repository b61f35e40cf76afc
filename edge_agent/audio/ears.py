"""The "ears": from mic blocks (+ aligned echo reference) to events and uplink audio.

Per block, in order:
1. echo cancellation (AEC3, bypassed while nothing has played for ~1 s); with
   AEC disabled, the playback guard marks blocks where the device's own
   playback is audible (see `edge_agent.audio.echo`);
2. the wake word model always runs on the cleaned audio (on digital silence
   for guarded blocks), in every mode;
3. webrtcvad classifies every frame (it is nearly free and stays adapted to
   the room), on the cleaned audio with AEC-gated blocks refilled with room
   noise (`NoiseFill`); frames + verdicts go into a bounded history ring
   (`history_ms`, oldest dropped);
4. the user's turn (`Listen.TURN`): the VAD gate turns frames into
   SpeechStarted / UplinkAudio / SpeechEnded; while the reference is audible
   (+300 ms) it needs as much speech to open as a barge-in (300 ms), because
   residual echo gives short false bursts. Otherwise frames and wake words go
   to the barge-in detector, which the policy arms while a reply is due or
   playing (`Listen.BARGE_IN`) with what counts, and disarms otherwise.

The ears decide none of this: they carry out the conversation policy
(`edge_agent.core.policy`) handed to `apply` after every event. `apply` may be
called from any thread: the orders are queued and take effect at the start of
the next `process` call, so one block is always handled under one policy.
Synchronous and device-free: the daemon calls `process` from one worker thread
(inference must stay off the asyncio loop).

Blocks are whole multiples of 10 ms. While the ears only wait for the wake word and
nothing plays, they publish `due_grid` (the ends of the wake model's 80 ms frames) and the
capture pipeline and the audio engine hand idle audio over up to 80 ms at a time, in one
call at the block where a frame ends; every step above works in 10 ms units inside a
block, so the events, their positions and the uplinked audio are those of block-by-block
processing (tests/test_ears.py compares both on the real models).

What each kind of listening means here:
- WAKE_WORD: wake word only; nothing is gated or sent.
- TURN: the gate runs from the uplink window's `from_sample`, replaying the
  history from there (the end of the wake phrase, the onset of a voice
  barge-in), so speech right after the wake word is not lost while the
  session connects; the daemon forwards (or buffers) the UplinkAudio.
- BARGE_IN: the detector fires once per reply (a wake word over the reply
  yields both WakeWordDetected and BargeInDetected).
- NOTHING: blocks are dropped unheard.
Wake words are reported whenever the ears listen (the refractory time keeps
one phrase from firing twice); the machine decides what they mean.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from edge_agent.audio.echo import (
    Aec3EchoCanceller,
    EchoCanceller,
    NoiseFill,
    PlaybackGuard,
    reference_active,
)
from edge_agent.audio.wakeword import FRAME_SAMPLES as WAKE_FRAME_SAMPLES
from edge_agent.audio.wakeword import WakeWordDetector
from edge_agent.core.barge_in import BargeInConfig, BargeInDetector
from edge_agent.core.events import (
    EarEvent,
    SpeechStarted,
    UplinkAudio,
    WakeWordDetected,
)
from edge_agent.core.policy import BargeInRules, ConversationPolicy, Listen, Uplink
from edge_agent.core.vad_gate import VadGate, VadGateConfig

logger = logging.getLogger(__name__)

_MAX_PENDING_COMMANDS = 64
# The first utterance of an uplink window that starts at a known sample (after a wake
# word or a barge-in) is sent from up to this long before the run that opened the gate,
# back to the window's start: see VadGate.reset. Longer pauses stay local.
WINDOW_LEAD_MS = 1500
# After the reference goes silent the echo still arrives (output latency + reverb).
DOUBLE_TALK_TAIL_MS = 300


def ms_to_samples(ms: int, rate_hz: int) -> int:
    return ms * rate_hz // 1000


@dataclass(frozen=True)
class _Orders:
    """The part of a conversation policy the ears carry out."""

    listen: Listen = Listen.WAKE_WORD
    uplink: Uplink | None = None
    barge_in: BargeInRules | None = None

    @classmethod
    def of(cls, policy: ConversationPolicy) -> _Orders:
        return cls(policy.listen, policy.uplink, policy.barge_in)


class WakeDetector(Protocol):
    def process(self, samples: np.ndarray, start_sample: int) -> list[WakeWordDetected]: ...


@dataclass(frozen=True)
class EarsConfig:
    """Everything `Ears.create` needs; `from_settings` maps config.toml onto it."""

    sample_rate_hz: int = 16000
    wake_models: tuple[str, ...] = ("hey_jarvis",)
    wake_threshold: float = 0.5
    # Per-model overrides, keyed as in wake_models (or by the model file's stem).
    wake_thresholds: Mapping[str, float] = field(default_factory=dict)
    wake_refractory_s: float = 2.0
    vad_mode: int = 2
    gate: VadGateConfig = field(default_factory=VadGateConfig)
    barge_in: BargeInConfig = field(default_factory=BargeInConfig)
    aec_enabled: bool = True
    aec_stream_delay_ms: int = 0
    aec_idle_bypass_ms: int = 1000
    playback_guard_tail_ms: int = 500  # used only with AEC disabled
    history_ms: int = 3000  # how far back an uplink window can reach

    def __post_init__(self) -> None:
        if self.sample_rate_hz != 16000:
            raise ValueError("the ears run at 16 kHz (openWakeWord, AEC3 and the uplink need it)")
        if self.gate.sample_rate_hz != self.sample_rate_hz:
            raise ValueError("gate.sample_rate_hz must match sample_rate_hz")
        if self.barge_in.sample_rate_hz != self.sample_rate_hz:
            raise ValueError("barge_in.sample_rate_hz must match sample_rate_hz")
        if self.history_ms < self.gate.pre_roll_ms + 500:
            raise ValueError("history_ms must exceed the gate pre-roll by at least 500 ms")

    @classmethod
    def from_settings(cls, settings: Any) -> EarsConfig:
        """Map the app config (sections wake_word, vad, echo) onto EarsConfig.

        Duck-typed so this module does not depend on `edge_agent.config`; wake
        model paths must already be resolved (relative to the config file).
        """
        ww, vad, echo = settings.wake_word, settings.vad, settings.echo
        return cls(
            wake_models=tuple(ww.models),
            wake_threshold=ww.threshold,
            wake_thresholds=dict(ww.thresholds),
            wake_refractory_s=ww.refractory_s,
            vad_mode=vad.aggressiveness,
            gate=VadGateConfig(
                frame_ms=vad.frame_ms,
                pre_roll_ms=vad.pre_roll_ms,
                speech_start_ms=vad.speech_start_ms,
                speech_end_ms=vad.speech_end_ms,
                max_utterance_s=vad.max_utterance_s,
            ),
            barge_in=BargeInConfig(min_speech_ms=echo.barge_in_speech_ms),
            aec_enabled=echo.enabled,
        )


@dataclass
class EarsStats:
    """Counters for logs and benchmarks (read from any thread; plain ints/floats)."""

    blocks: int = 0
    audio_samples: int = 0
    cpu_s: float = 0.0  # CPU time of the calling thread spent inside process()
    wake_detections: int = 0
    barge_ins: int = 0
    utterances: int = 0
    uplink_bytes: int = 0
    guarded_samples: int = 0
    discontinuities: int = 0
    bad_blocks: int = 0

    @property
    def audio_s(self) -> float:
        return self.audio_samples / 16000.0

    @property
    def cpu_per_audio_s(self) -> float:
        """CPU seconds per second of audio (0.01 = 1% of one core)."""
        return self.cpu_s / self.audio_s if self.audio_samples else 0.0


@dataclass(frozen=True)
class _Frame:
    start: int
    pcm: np.ndarray
    speech: bool


class Ears:
    """The listening pipeline. Build with `Ears.create(config)`; tests inject fakes."""

    def __init__(
        self,
        *,
        wake: WakeDetector,
        is_speech: Callable[[np.ndarray], bool],
        echo: EchoCanceller | None,
        config: EarsConfig | None = None,
        guard_playback: bool | None = None,
    ) -> None:
        """guard_playback: mute wake word/VAD while playback is audible; defaults to
        on exactly when there is no echo canceller (see `edge_agent.audio.echo`)."""
        self.config = config or EarsConfig()
        self._wake = wake
        self._is_speech = is_speech
        self._echo = echo
        self._latency = echo.latency_samples if echo is not None else 0
        self._guard = (
            PlaybackGuard(
                sample_rate_hz=self.config.sample_rate_hz,
                tail_ms=self.config.playback_guard_tail_ms,
            )
            if (echo is None if guard_playback is None else guard_playback)
            else None
        )
        # AEC3 gates the room noise to silence during echo; the VAD must not see that.
        self._noise_fill = NoiseFill(sample_rate_hz=self.config.sample_rate_hz) if echo else None
        # While the device plays (and for a short tail), residual echo can look like
        # a short burst of speech: the gate then needs as much speech as a barge-in.
        self._double_talk_frames = max(
            1, -(-self.config.barge_in.min_speech_ms // self.config.gate.frame_ms)
        )
        self._double_talk_tail = ms_to_samples(DOUBLE_TALK_TAIL_MS, self.config.sample_rate_hz)
        # The playback period the gate treats as double talk: [from, until) in samples.
        # Frames from before it (the history an uplink window replays) are not in it.
        self._ref_active_from = 0
        self._ref_active_until: int | None = None
        self._window_lead = ms_to_samples(WINDOW_LEAD_MS, self.config.sample_rate_hz)
        self._gate = VadGate(
            self.config.gate,
            max_start_frames=self._double_talk_frames,
            max_lead_samples=self._window_lead,
        )
        self._barge = BargeInDetector(self.config.barge_in)
        self._frame_samples = self.config.gate.frame_samples
        self._pending = np.empty(0, dtype=np.int16)  # cleaned audio not yet framed
        self._pending_vad = np.empty(0, dtype=np.int16)  # what the VAD sees of it
        self._pending_start = 0
        self._pending_guarded = False
        self._history: deque[_Frame] = deque(
            maxlen=max(1, self.config.history_ms // self.config.gate.frame_ms)
        )
        self._commands: deque[_Orders] = deque()
        self._requested = _Orders()  # the orders last handed to `apply`
        self._orders = _Orders()  # the orders the block path carries out
        self._next_sample: int | None = None
        self._zeros = np.zeros(160, dtype=np.int16)
        # Where the wake model's next 80 ms frame ends (the detector frames the stream from
        # the first sample it is given and again after every jump; mirrored here).
        self._wake_next: int | None = None
        self._wake_frame_end = 0
        self.due_grid: tuple[int, int] | None = None
        """Read on other threads (capture pipeline, sound card): ``(phase, period)`` in mic
        samples. Only a block whose span reaches a position ``phase + k * period`` can
        make these ears say anything, so blocks before it may wait and be handed over
        with it; None: every block counts, hand each over as it comes. Set only while
        the ears listen for the wake word alone, nothing plays and no orders are
        pending: then the only possible event, a wake word, comes out at the end of a
        wake-model frame (80 ms apart, lagging the mic by the canceller's latency)."""
        self.stats = EarsStats()

    @classmethod
    def create(cls, config: EarsConfig | None = None) -> Ears:
        """Build the real pipeline: openWakeWord, webrtcvad, AEC3 (slow: loads models)."""
        from edge_agent.audio.vad import WebRtcVad

        config = config or EarsConfig()
        wake = WakeWordDetector.load(
            config.wake_models,
            threshold=config.wake_threshold,
            thresholds=config.wake_thresholds,
            refractory_s=config.wake_refractory_s,
        )
        vad = WebRtcVad(config.vad_mode, config.sample_rate_hz)
        echo = (
            Aec3EchoCanceller.create(
                sample_rate_hz=config.sample_rate_hz,
                stream_delay_ms=config.aec_stream_delay_ms,
                idle_bypass_ms=config.aec_idle_bypass_ms,
            )
            if config.aec_enabled
            else None
        )
        if echo is None:
            logger.warning(
                "echo cancellation disabled: wake word and VAD are muted while the device "
                "plays audio; only the button can interrupt a reply"
            )
        return cls(wake=wake, is_speech=vad.is_speech, echo=echo, config=config)

    # -- control (any thread) ---------------------------------------------

    @property
    def listening_for(self) -> Listen:
        """What the most recently applied policy asked the ears to listen for."""
        return self._requested.listen

    def apply(self, policy: ConversationPolicy) -> None:
        """Carry out `policy` from the next block on (any thread; a repeat is a no-op).

        A new uplink window restarts the gate at its `from_sample` (None: the next
        block), replaying history from there; nothing before it is uplinked (the wake
        phrase stays local), and the gate still needs speech to open, so silence is not
        sent. The history reaches back `history_ms`. Arriving at BARGE_IN arms the
        barge-in detector with the policy's rules from the next block on; leaving TURN
        closes the gate silently (no SpeechEnded: the machine already moved on).
        """
        orders = _Orders.of(policy)
        if orders != self._requested:
            self._requested = orders
            self._queue(orders)
            self.due_grid = None  # every block counts until the orders are carried out

    def _queue(self, command: _Orders) -> None:
        # deque append/popleft are thread-safe; the bound only guards against a
        # runaway caller (oldest command dropped, logged).
        if len(self._commands) >= _MAX_PENDING_COMMANDS:
            dropped = self._commands.popleft()
            logger.warning("ears: too many pending commands, dropped %s", dropped)
        self._commands.append(command)

    # -- the block path (worker thread) -------------------------------------

    def process(self, mic: np.ndarray, ref: np.ndarray | None, sample_pos: int) -> list[EarEvent]:
        """Handle one mic block (int16 mono, 16 kHz) starting at capture sample `sample_pos`.

        `ref` is the playback reference aligned with this block (None or zeros
        while nothing plays).
        """
        t0 = time.thread_time()
        events: list[EarEvent] = []
        try:
            self._apply_commands(events)
            if self._orders.listen is Listen.NOTHING:
                self._drop_block()
                return events
            mic = self._check_block(mic)
            if mic is None:
                return events
            if ref is not None:
                ref = self._check_ref(ref, mic.size)
            n = mic.size
            if self._next_sample is not None and sample_pos != self._next_sample:
                self.stats.discontinuities += 1
                level = logging.WARNING if self.stats.discontinuities == 1 else logging.DEBUG
                logger.log(level, "ears: block at %d, expected %d", sample_pos, self._next_sample)
                self._pending = np.empty(0, dtype=np.int16)
                self._pending_vad = self._pending
            self._next_sample = sample_pos + n
            self.stats.blocks += 1
            self.stats.audio_samples += n

            # With AEC everything below runs on the canceller's output, which lags the mic
            # by a constant `latency_samples` whether AEC3 runs or not: positions stay exact.
            # Until AEC3 has settled on real playback its suppressor may gate the user's
            # words (EchoOutput.settled): the uplink then carries the raw mic. The VAD
            # always decides on the cleaned audio, so a cue's own echo never opens the
            # gate; words it missed under the cue come back through the gate's pre-roll.
            settled = True
            if self._echo is not None:
                echo = self._echo.process(mic, ref)
                cleaned, heard, settled = echo.cleaned, echo.raw, echo.settled
                start = sample_pos - self._echo.latency_samples
            else:
                cleaned = heard = mic
                start = sample_pos
            uplink = cleaned if settled else heard
            if start < 0:  # the delay line's first samples precede the stream: drop them
                cut = min(-start, cleaned.size)
                cleaned, heard, uplink = cleaned[cut:], heard[cut:], uplink[cut:]
                start += cut
                n = cleaned.size
                if n == 0:
                    return events
            guarded = self._guard.update(ref, start, n) if self._guard is not None else False
            if guarded:
                self.stats.guarded_samples += n

            wake_input = self._silence(n) if guarded else cleaned
            self._follow_wake_frames(start, n)
            for det in self._wake.process(wake_input, start):
                self.stats.wake_detections += 1
                events.append(det)
                barge = self._barge.on_wake_word(det.end_sample, start + n)  # if armed
                if barge is not None:
                    self.stats.barge_ins += 1
                    events.append(barge)

            playing = reference_active(ref)
            if playing:
                if self._ref_active_until is None or start > self._ref_active_until:
                    self._ref_active_from = start  # a new playback period begins
                self._ref_active_until = start + n + self._double_talk_tail
            vad_input = cleaned
            if self._noise_fill is not None:
                vad_input = self._noise_fill.process(heard, cleaned, playing)
            for frame in self._frames(uplink, vad_input, start, guarded):
                self._route_frame(frame, events)
            self._set_due_grid(idle=not (playing or guarded))
            return events
        finally:
            self.stats.cpu_s += time.thread_time() - t0

    def _follow_wake_frames(self, start: int, n: int) -> None:
        """Mirror the wake detector's framing: a jump restarts its frames at `start`."""
        if start != self._wake_next:
            self._wake_frame_end = start + WAKE_FRAME_SAMPLES
        self._wake_next = start + n
        while self._wake_frame_end <= self._wake_next:
            self._wake_frame_end += WAKE_FRAME_SAMPLES

    def _set_due_grid(self, *, idle: bool) -> None:
        """See `due_grid`: wake frames end every 80 ms, seen at the mic one canceller
        latency later; None unless the ears only wait for the wake word, idle."""
        self.due_grid = self._wake_grid() if idle else None
        if self._commands:  # orders queued meanwhile (apply() may have cleared it first)
            self.due_grid = None

    def _wake_grid(self) -> tuple[int, int] | None:
        orders = self._orders
        if orders.listen is not Listen.WAKE_WORD or orders.barge_in is not None:
            return None
        if self._echo is not None and not getattr(self._echo, "bypassed", False):
            return None  # the canceller is running: something played just now
        tail, heard_to = self._ref_active_until, self._next_sample
        if tail is not None and heard_to is not None and heard_to - self._latency < tail:
            return None  # double-talk tail after playback (the guard's tail: `idle` above)
        return (self._wake_frame_end + self._latency, WAKE_FRAME_SAMPLES)

    def _drop_block(self) -> None:
        """Listening to nothing: forget partial frames; the next block heard is no jump."""
        self._next_sample = None
        self._pending = np.empty(0, dtype=np.int16)
        self._pending_vad = self._pending

    def _silence(self, n: int) -> np.ndarray:
        if self._zeros.size != n:
            self._zeros = np.zeros(n, dtype=np.int16)
        return self._zeros

    def _check_block(self, mic: np.ndarray) -> np.ndarray | None:
        arr = np.asarray(mic)
        if arr.dtype != np.int16 or arr.ndim != 1 or arr.size == 0:
            self.stats.bad_blocks += 1
            if self.stats.bad_blocks == 1:
                logger.warning(
                    "ears: bad mic block (dtype %s, shape %s); expected 1-D int16",
                    arr.dtype,
                    arr.shape,
                )
            if arr.size == 0 or arr.dtype.kind not in "iu":
                return None
            arr = arr.reshape(-1).astype(np.int16)
        return arr

    def _check_ref(self, ref: np.ndarray, n: int) -> np.ndarray | None:
        arr = np.asarray(ref)
        if arr.dtype == np.int16 and arr.ndim == 1 and arr.size == n:
            return arr
        self.stats.bad_blocks += 1
        if self.stats.bad_blocks == 1:
            logger.warning(
                "ears: bad reference block (dtype %s, shape %s) for %d mic samples; ignored",
                arr.dtype,
                arr.shape,
                n,
            )
        return None

    def _frames(
        self, uplink: np.ndarray, vad_input: np.ndarray, sample_pos: int, guarded: bool
    ) -> list[_Frame]:
        """Cut the uplink stream into VAD frames, each classified once on `vad_input`."""
        if self._pending.size == 0:
            self._pending_start = sample_pos
            self._pending_guarded = False
            # Copies: the caller may reuse its block buffers.
            self._pending = uplink.copy()
            self._pending_vad = vad_input.copy()
        else:
            self._pending = np.concatenate((self._pending, uplink))
            self._pending_vad = np.concatenate((self._pending_vad, vad_input))
        # A frame counts as guarded if any block in it was.
        self._pending_guarded = self._pending_guarded or guarded
        fs = self._frame_samples
        frames = []
        while self._pending.size >= fs:
            pcm = self._pending[:fs].copy()
            speech = (
                False if self._pending_guarded else bool(self._is_speech(self._pending_vad[:fs]))
            )
            frame = _Frame(self._pending_start, pcm, speech)
            self._history.append(frame)
            frames.append(frame)
            self._pending = self._pending[fs:]
            self._pending_vad = self._pending_vad[fs:]
            self._pending_start += fs
            self._pending_guarded = guarded and self._pending.size > 0
        return frames

    def _route_frame(self, frame: _Frame, events: list[EarEvent]) -> None:
        if self._orders.listen is Listen.TURN:
            self._gate_events(self._gate_frame(frame), events)
        else:
            barge = self._barge.on_vad_frame(frame.start, frame.pcm.size, frame.speech)
            if barge is not None:
                self.stats.barge_ins += 1
                events.append(barge)

    def _gate_events(self, gate_events: list, events: list[EarEvent]) -> None:
        for ev in gate_events:
            if isinstance(ev, UplinkAudio):
                self.stats.uplink_bytes += len(ev.pcm)
            elif isinstance(ev, SpeechStarted):
                self.stats.utterances += 1
            events.append(ev)

    def _apply_commands(self, events: list[EarEvent]) -> None:
        while self._commands:
            self._carry_out(self._commands.popleft(), events)

    def _carry_out(self, orders: _Orders, events: list[EarEvent]) -> None:
        previous, self._orders = self._orders, orders
        logger.debug("ears: %s -> %s", previous, orders)
        if orders.listen is Listen.TURN:
            self._barge.disarm()
            if orders.uplink is not None and orders.uplink != previous.uplink:  # a new window
                self._begin_uplink(orders.uplink.from_sample, events)
            return
        self._gate.reset()
        if orders.barge_in is None:
            self._barge.disarm()
        elif previous.listen is not Listen.BARGE_IN or orders.barge_in != previous.barge_in:
            self._barge.arm(orders.barge_in, floor_sample=self._next_output_sample())

    def _next_output_sample(self) -> int | None:
        """Where the next block's output starts (it lags the mic by the canceller's
        latency)."""
        return None if self._next_sample is None else max(0, self._next_sample - self._latency)

    def _begin_uplink(self, from_sample: int | None, events: list[EarEvent]) -> None:
        # A window that starts at a known point (the end of the wake phrase, the onset of
        # a barge-in) holds the user's words from there on, some of which a cue may have
        # hidden from the VAD: its first utterance may reach back to it. A window opened
        # "from now" (the follow-up after a reply) keeps the plain pre-roll.
        lead = self._window_lead if from_sample is not None else 0
        if from_sample is None:  # from the next block on
            from_sample = self._next_output_sample() or 0
        logger.debug("ears: uplink from sample %d", from_sample)
        self._gate.reset(floor_sample=from_sample, lead_samples=lead)
        if self._history and from_sample < self._history[0].start:
            logger.warning(
                "ears: uplink requested from sample %d but history starts at %d",
                from_sample,
                self._history[0].start,
            )
        for frame in list(self._history):
            if frame.start >= from_sample:
                self._gate_events(self._gate_frame(frame), events)

    def _gate_frame(self, frame: _Frame) -> list:
        during_playback = (
            self._ref_active_until is not None
            and self._ref_active_from <= frame.start < self._ref_active_until
        )
        return self._gate.process_frame(
            frame.pcm,
            frame.start,
            frame.speech,
            start_frames=self._double_talk_frames if during_playback else None,
        )

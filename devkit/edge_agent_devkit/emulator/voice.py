"""The emulator's spoken replies: 24 kHz mono s16le PCM.

Real speech (espeak-ng) makes downstream tests meaningful: the jitter buffer, the speaker
and the echo canceller see speech-like audio, and webrtcvad/openWakeWord react to it as
they would to the model's voice. Without espeak-ng a tone of similar length stands in.
Synthesis costs 50-100 ms and runs a subprocess, so it runs in a worker thread and
results are cached in memory (and on disk by edge_agent_devkit.rig.speech).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections import OrderedDict

import numpy as np

from .protocol import AUDIO_OUT_RATE_HZ

logger = logging.getLogger(__name__)

BYTES_PER_SAMPLE = 2
_CACHE_ENTRIES = 64  # replies are short sentences; LRU beyond that
TONE_HZ = 440.0  # the reply tone (public: the bench tells it from the cues by pitch)
_TONE_LEVEL = 0.25  # of full scale, about -15 dBFS RMS
_TONE_S_PER_CHAR = 0.06
_TONE_MIN_S = 0.3
_FADE_S = 0.01

# (text, voice, wpm, use_espeak) -> pcm; shared by all emulators in the process.
_cache: OrderedDict[tuple[str, str, int, bool], bytes] = OrderedDict()
_cache_lock = threading.Lock()  # worker threads fill the cache, the event loop reads it
_espeak_failure_logged = False


def tone_pcm(text: str, sample_rate: int = AUDIO_OUT_RATE_HZ) -> bytes:
    """A faded sine whose length grows with the text (about 60 ms per character)."""
    seconds = max(_TONE_MIN_S, len(text) * _TONE_S_PER_CHAR)
    n = round(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    signal = np.sin(2 * math.pi * TONE_HZ * t) * (_TONE_LEVEL * 32767)
    fade = min(n // 2, round(_FADE_S * sample_rate))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade, endpoint=False)
        signal[:fade] *= ramp
        signal[n - fade :] *= ramp[::-1]
    return np.round(signal).astype("<i2").tobytes()


def speech_pcm(text: str, voice: str, speed_wpm: int) -> bytes:
    """espeak-ng speech at 24 kHz with its silent padding trimmed; raises when unavailable."""
    from edge_agent_devkit.rig import speech  # heavy-ish import (soxr), only when speaking

    if not speech.espeak_available():
        raise speech.SpeechSynthesisError("espeak-ng is not installed")
    audio = speech.synthesize(text, voice=voice, speed_wpm=speed_wpm, sample_rate=AUDIO_OUT_RATE_HZ)
    with contextlib.suppress(ValueError):  # all quiet: keep it as it is
        audio = speech.trim(audio)
    return audio.astype("<i2").tobytes()


def render_sync(
    text: str, *, voice: str = "en-us", speed_wpm: int = 175, espeak: bool = True
) -> bytes:
    """Reply audio for `text` (blocking; cached). Falls back to a tone when espeak fails."""
    global _espeak_failure_logged
    key = (text, voice, int(speed_wpm), bool(espeak))
    cached = _cache_get(key)
    if cached is not None:
        return cached
    pcm: bytes | None = None
    if espeak:
        try:
            pcm = speech_pcm(text, voice, speed_wpm)
        except Exception as exc:  # any synthesis failure degrades to a tone, never crashes
            if not _espeak_failure_logged:
                logger.warning("espeak-ng reply synthesis unavailable (%s); using a tone", exc)
                _espeak_failure_logged = True
    if pcm is None:
        pcm = tone_pcm(text)
    with _cache_lock:
        _cache[key] = pcm
        while len(_cache) > _CACHE_ENTRIES:
            _cache.popitem(last=False)
    return pcm


def _cache_get(key: tuple[str, str, int, bool]) -> bytes | None:
    with _cache_lock:
        pcm = _cache.get(key)
        if pcm is not None:
            _cache.move_to_end(key)
        return pcm


async def render(
    text: str, *, voice: str = "en-us", speed_wpm: int = 175, espeak: bool = True
) -> bytes:
    """Reply audio for `text` without blocking the event loop."""
    cached = _cache_get((text, voice, int(speed_wpm), bool(espeak)))
    if cached is not None:
        return cached
    return await asyncio.to_thread(
        render_sync, text, voice=voice, speed_wpm=speed_wpm, espeak=espeak
    )


def split_chunks(pcm: bytes, chunk_ms: int, sample_rate: int = AUDIO_OUT_RATE_HZ) -> list[bytes]:
    """Cut PCM into chunks of `chunk_ms` (the last one may be shorter)."""
    step = max(1, round(sample_rate * chunk_ms / 1000)) * BYTES_PER_SAMPLE
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


def transcript_pieces(text: str) -> list[str]:
    """Word pieces whose concatenation is exactly `text` (what outputTranscription streams)."""
    pieces: list[str] = []
    current = ""
    for ch in text:
        if ch.isspace() and current and not current[-1].isspace():
            current += ch
            continue
        if not ch.isspace() and current and current[-1].isspace():
            pieces.append(current)
            current = ""
        current += ch
    if current:
        pieces.append(current)
    return pieces


def spread(pieces: list[str], n_chunks: int) -> list[list[str]]:
    """Assign transcript pieces to audio chunks in proportion to their position."""
    out: list[list[str]] = [[] for _ in range(max(1, n_chunks))]
    if not pieces:
        return out
    for i, piece in enumerate(pieces):
        out[min(len(out) - 1, i * len(out) // len(pieces))].append(piece)
    return out

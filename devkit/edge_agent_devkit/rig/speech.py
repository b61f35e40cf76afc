"""Synthetic speech and simulated rooms for tests, the demo and benchmarks.

Real speech recognisers (openWakeWord, webrtcvad, AEC3) are only meaningfully
tested on speech-like audio, and this machine has no microphone: espeak-ng
gives reproducible speech in several voices and speeds, and a small room model
(latency, direct path, exponential reverb tail, noise) turns "what the speaker
played" into "what the mic heard" for closed-loop echo tests.

Synthesised clips are cached on disk (keyed by text, voice, speed, rate and
espeak-ng version) because espeak-ng plus resampling costs ~50-100 ms a clip.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soxr

logger = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16000
CACHE_ENV = "EDGE_AGENT_SPEECH_CACHE"
_ESPEAK_TIMEOUT_S = 30.0

# Voices shipped with espeak-ng itself (no mbrola), good for variety in tests.
TEST_VOICES: tuple[str, ...] = (
    "en-us",
    "en-gb",
    "en+f3",
    "en+m3",
    "en-us+f2",
    "en-gb-scotland",
    "en-029",
    "en-us+m7",
)


class SpeechSynthesisError(RuntimeError):
    """espeak-ng is missing or produced no usable audio."""


def espeak_available() -> bool:
    """True when the espeak-ng binary is on PATH (tests skip without it)."""
    return shutil.which("espeak-ng") is not None


def default_cache_dir() -> Path:
    """Cache folder: $EDGE_AGENT_SPEECH_CACHE or ~/.cache/edge-agent-test/speech."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    return Path.home() / ".cache" / "edge-agent-test" / "speech"


@lru_cache(maxsize=1)
def _espeak_version() -> str:
    try:
        out = subprocess.run(
            ["espeak-ng", "--version"],
            capture_output=True,
            text=True,
            timeout=_ESPEAK_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SpeechSynthesisError(f"espeak-ng not usable: {exc}") from exc
    return out.stdout.strip()


def _parse_espeak_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Decode espeak-ng's --stdout WAV (its header sizes are bogus 0x7fff.... values)."""
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise SpeechSynthesisError("espeak-ng did not produce a WAV stream")
    pos = 12
    rate = 0
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        chunk_len = int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = pos + 8
        if chunk_id == b"fmt ":
            fmt = data[body : body + 16]
            channels = int.from_bytes(fmt[2:4], "little")
            rate = int.from_bytes(fmt[4:8], "little")
            bits = int.from_bytes(fmt[14:16], "little")
            if channels != 1 or bits != 16:
                raise SpeechSynthesisError(f"unexpected espeak-ng format {channels}ch {bits}bit")
        elif chunk_id == b"data":
            if rate == 0:
                raise SpeechSynthesisError("WAV data before fmt chunk")
            payload = data[body:]
            payload = payload[: len(payload) // 2 * 2]
            return np.frombuffer(payload, dtype="<i2").astype(np.int16), rate
        pos = body + chunk_len + (chunk_len & 1)
    raise SpeechSynthesisError("no data chunk in espeak-ng output")


def resample(signal: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """High-quality (soxr) resampling of int16 mono audio."""
    if from_hz == to_hz:
        return signal.astype(np.int16, copy=True)
    out = soxr.resample(signal.astype(np.float32), from_hz, to_hz, quality="HQ")
    return to_int16(out)


def synthesize(
    text: str,
    *,
    voice: str = "en-us",
    speed_wpm: int = 160,
    sample_rate: int = SAMPLE_RATE_HZ,
    cache_dir: Path | None = None,
) -> np.ndarray:
    """Speak `text` with espeak-ng; returns mono int16 at `sample_rate`, cached on disk.

    espeak-ng pads a little silence at both ends; use `active_bounds` to find
    the speech itself.
    """
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    key = hashlib.sha256(
        repr((text, voice, int(speed_wpm), int(sample_rate), _espeak_version())).encode()
    ).hexdigest()[:24]
    path = cache / f"{key}.npy"
    if path.exists():
        try:
            return np.load(path).astype(np.int16, copy=False)
        except (OSError, ValueError):
            logger.warning("discarding unreadable speech cache file %s", path)
    try:
        proc = subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(int(speed_wpm)), "--stdout", text],
            capture_output=True,
            timeout=_ESPEAK_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SpeechSynthesisError(f"espeak-ng failed: {exc}") from exc
    if proc.returncode != 0:
        raise SpeechSynthesisError(
            f"espeak-ng exited {proc.returncode}: {proc.stderr.decode(errors='replace')}"
        )
    raw, rate = _parse_espeak_wav(proc.stdout)
    if raw.size == 0:
        raise SpeechSynthesisError(f"espeak-ng produced no audio for {text!r} ({voice})")
    audio = resample(raw, rate, sample_rate)
    cache.mkdir(parents=True, exist_ok=True)
    # Atomic write: several test processes may fill the cache at once.
    with tempfile.NamedTemporaryFile(dir=cache, suffix=".tmp", delete=False) as tmp:
        np.save(tmp, audio)
    os.replace(tmp.name, path)
    return audio


def silence(seconds: float, sample_rate: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Digital silence (int16 zeros)."""
    return np.zeros(round(seconds * sample_rate), dtype=np.int16)


def concat(*parts: np.ndarray) -> np.ndarray:
    """Concatenate int16 clips."""
    return np.concatenate([p.astype(np.int16, copy=False) for p in parts])


def to_int16(signal: np.ndarray) -> np.ndarray:
    """Round and clip a float signal (int16 scale) to int16."""
    return np.clip(np.round(signal), -32768, 32767).astype(np.int16)


def active_bounds(signal: np.ndarray, threshold: int = 300) -> tuple[int, int]:
    """(first, last + 1) sample index whose magnitude exceeds `threshold`.

    300 (about -40 dBFS) sits well above espeak-ng's zero padding and below
    its quietest consonants; raises when the clip has no such sample.
    """
    idx = np.flatnonzero(np.abs(signal.astype(np.int32)) > threshold)
    if idx.size == 0:
        raise ValueError("signal has no sample above the threshold")
    return int(idx[0]), int(idx[-1]) + 1


def trim(signal: np.ndarray, threshold: int = 300) -> np.ndarray:
    """Cut the silence espeak-ng pads around speech."""
    first, end = active_bounds(signal, threshold)
    return signal[first:end]


def rms_dbfs(signal: np.ndarray) -> float:
    """RMS level in dBFS (full scale = 32768); -inf-safe floor at -200 dB."""
    x = signal.astype(np.float64)
    rms = float(np.sqrt(np.mean(x * x))) if x.size else 0.0
    return 20.0 * np.log10(max(rms, 1e-10) / 32768.0)


def scale_to_dbfs(signal: np.ndarray, level_dbfs: float) -> np.ndarray:
    """Scale a clip so its RMS sits at `level_dbfs` (returns float)."""
    x = signal.astype(np.float64)
    current = rms_dbfs(signal)
    return x * 10.0 ** ((level_dbfs - current) / 20.0)


@dataclass(frozen=True)
class Room:
    """A loudspeaker-to-microphone path.

    latency_ms: playback + capture buffering before the sound leaves the speaker.
    direct_delay_ms / direct_gain_db: the acoustic direct path.
    rt60_s: reverb time (tail decays 60 dB in this time).
    drr_db: direct-to-reverberant energy ratio.
    noise_dbfs: RMS of the white-ish background noise added to the mic.
    """

    latency_ms: float = 20.0
    direct_delay_ms: float = 10.0
    direct_gain_db: float = -10.0
    rt60_s: float = 0.25
    drr_db: float = 3.0
    noise_dbfs: float = -60.0


def room_impulse_response(
    room: Room, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE_HZ
) -> np.ndarray:
    """Direct path plus an exponentially decaying noise tail (float64, unit = linear gain)."""
    start = round((room.latency_ms + room.direct_delay_ms) * sample_rate / 1000)
    tail_len = round(room.rt60_s * sample_rate)
    ir = np.zeros(start + 1 + tail_len)
    direct = 10.0 ** (room.direct_gain_db / 20.0)
    ir[start] = direct
    t = np.arange(tail_len) / sample_rate
    # Amplitude decays 60 dB over RT60: exp(-ln(1000) * t / rt60).
    tail = rng.standard_normal(tail_len) * np.exp(-np.log(1000.0) * t / room.rt60_s)
    # Short onset ramp: early reflections arrive a millisecond or two after the direct path.
    onset = min(tail_len, round(0.002 * sample_rate))
    tail[:onset] *= np.linspace(0.0, 1.0, onset, endpoint=False)
    tail_energy = float(np.sum(tail * tail))
    wanted = direct * direct * 10.0 ** (-room.drr_db / 10.0)
    ir[start + 1 :] = tail * np.sqrt(wanted / tail_energy)
    return ir


def simulate_echo(
    played: np.ndarray,
    room: Room,
    rng: np.random.Generator,
    sample_rate: int = SAMPLE_RATE_HZ,
) -> np.ndarray:
    """What the mic hears of `played` in `room` (float, same length, no noise)."""
    ir = room_impulse_response(room, rng, sample_rate)
    wet = np.convolve(played.astype(np.float64), ir)[: played.size]
    return wet


def add_noise(signal: np.ndarray, level_dbfs: float, rng: np.random.Generator) -> np.ndarray:
    """Add low-passed white noise at `level_dbfs` RMS; returns float."""
    white = rng.standard_normal(signal.size)
    # A short low-pass kernel gives a gentler, more room-like spectrum than white noise.
    coloured = np.convolve(white, np.array([0.4, 0.3, 0.2, 0.1]), mode="same")
    rms = float(np.sqrt(np.mean(coloured * coloured))) or 1.0
    gain = 32768.0 * 10.0 ** (level_dbfs / 20.0) / rms
    return signal.astype(np.float64) + coloured * gain


def erle_db(mic: np.ndarray, cleaned: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Echo return loss enhancement: mic energy over cleaned energy (dB) where `mask` is true."""
    m = mic.astype(np.float64)
    c = cleaned.astype(np.float64)
    if mask is not None:
        m = m[mask]
        c = c[mask]
    return 10.0 * np.log10((np.sum(m * m) + 1e-9) / (np.sum(c * c) + 1e-9))


@dataclass(frozen=True)
class PhraseClip:
    """A wake phrase followed by a request, with the true boundaries (sample indices)."""

    audio: np.ndarray
    wake_end: int  # one past the last sample of the wake phrase above the threshold
    rest_start: int
    rest_end: int


# "hey jarvis, <request>" cases for wake_phrase_clip: (voice, words per minute, pause in
# seconds after the wake phrase). Shared by test_ears and the benchmark's wake delay.
WAKE_CASES: tuple[tuple[str, int, float], ...] = (
    ("en-us", 140, 0.20),
    ("en-gb", 165, 0.25),
    ("en+f3", 190, 0.15),
    ("en+m3", 140, 0.30),
    ("en-us+f2", 165, 0.20),
    ("en-gb-scotland", 190, 0.20),
    ("en-us+m7", 150, 0.25),
    ("en-gb-x-rp", 175, 0.15),
)


def wake_phrase_clip(
    voice: str,
    speed_wpm: int,
    *,
    wake_text: str = "hey jarvis",
    rest_text: str = "what time is it",
    lead_s: float = 2.5,
    gap_s: float = 0.2,
    tail_s: float = 1.0,
    noise_dbfs: float | None = -65.0,
    seed: int = 0,
    cache_dir: Path | None = None,
) -> PhraseClip:
    """`wake_text` and `rest_text` synthesised separately and joined with a pause.

    Synthesising the parts separately gives the exact end of the wake phrase
    (its last sample above the silence threshold), the reference for checking
    `WakeWordDetected.end_sample`. Light noise keeps the VAD realistic.
    """
    wake = trim(synthesize(wake_text, voice=voice, speed_wpm=speed_wpm, cache_dir=cache_dir))
    parts = [silence(lead_s), wake]
    wake_end = parts[0].size + wake.size
    rest_start = rest_end = wake_end
    if rest_text:
        rest = trim(synthesize(rest_text, voice=voice, speed_wpm=speed_wpm, cache_dir=cache_dir))
        parts += [silence(gap_s), rest]
        rest_start = wake_end + parts[-2].size
        rest_end = rest_start + rest.size
    parts.append(silence(tail_s))
    audio = concat(*parts)
    if noise_dbfs is not None:
        audio = to_int16(add_noise(audio, noise_dbfs, np.random.default_rng(seed)))
    return PhraseClip(audio, wake_end, rest_start, rest_end)


def wake_and_ask(question: str, voice: str = "en-us") -> np.ndarray:
    """ "hey jarvis", a short pause and `question`, as an owner says it to the rig's mic."""

    def phrase(text: str) -> np.ndarray:
        return trim(synthesize(text, voice=voice))

    return concat(silence(0.8), phrase("hey jarvis"), silence(0.15), phrase(question), silence(0.3))

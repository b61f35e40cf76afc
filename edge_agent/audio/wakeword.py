"""Wake word detection with openWakeWord 0.6 (TFLite), plus where the wake phrase ended.

Models: openwakeword 0.6 ships no model files and would download them; the
pretrained ones (melspectrogram, embedding_model, hey_jarvis, alexa,
hey_mycroft, hey_rhasspy, okay_nabu) come inside the `pyopen-wakeword` wheel,
in `pyopen_wakeword/models/`. A config names a built-in model or gives a path
to a custom `.tflite` wake model (same 16x96 embedding input).

`import openwakeword` costs ~1.3 s and ~146 MB (its package `__init__` pulls in
scipy, sklearn, onnxruntime); the models are therefore run by `oww_tflite`, with
openwakeword's own feature code but without that `__init__`, loaded lazily in
`WakeWordDetector.load`, once.

A corrupt .tflite can *segfault* the TFLite loader (measured: truncated and
bit-flipped files do), so `validate_model_file` loads the model in a child
process; config validation and `load` call it before the daemon touches it.

Where the phrase ended (`WakeWordDetected.end_sample`), so the uplink can start
right after "hey jarvis": the model scores 80 ms frames over a 1.28 s window;
its score crosses the threshold 40-450 ms after the phrase ends (measured on
espeak-ng speech, 11 voices x 3 speeds) and stays high until the phrase's
*start* leaves the window, so the score curve alone places the end only to
about +-200 ms. The detector therefore waits one more frame (80 ms) and looks
at the audio: the first pause (>= 70 ms, 25 dB under the speech) that starts
within 550 ms before the crossing, after >= 200 ms of speech, is the pause
after the wake phrase ("hey jarvis" has no such pause inside it; closures in
stop consonants last 40-60 ms). Without a pause it falls back to the crossing
minus 240 ms. Measured error (11 voices x 3 speeds, dry and reverberant):
-34..+43 ms with a pause of 100 ms or more after the wake phrase; -236..+284 ms
(median -60 ms, i.e. early: a bit of "jarvis" rather than a clipped command)
when the user runs straight on without any pause.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from edge_agent.core.events import (
    WakeWordDetected,
)

logger = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16000
FRAME_SAMPLES = 1280  # openWakeWord scores 80 ms frames
BUILTIN_WAKE_MODELS: tuple[str, ...] = (
    "hey_jarvis",
    "alexa",
    "hey_mycroft",
    "hey_rhasspy",
    "okay_nabu",
)
FEATURE_MODELS = ("melspectrogram", "embedding_model")
DEFAULT_THRESHOLD = 0.5
DEFAULT_REFRACTORY_S = 2.0
_VALIDATE_TIMEOUT_S = 60.0


class WakeModelError(ValueError):
    """A wake model name is unknown, or its file is missing or unusable."""


# -- model files --------------------------------------------------------------


def models_dir() -> Path:
    """The `pyopen_wakeword/models` folder (found without importing the package)."""
    spec = importlib.util.find_spec("pyopen_wakeword")
    if spec is None or not spec.submodule_search_locations:
        raise WakeModelError(
            "the pyopen-wakeword package (which ships the models) is not installed"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def resolve_wake_model(name_or_path: str | os.PathLike[str]) -> Path:
    """Map a built-in model name or a path to an existing .tflite file.

    Raises WakeModelError naming the valid built-ins for an unknown name, or
    saying which file is missing.
    """
    text = os.fspath(name_or_path).strip()
    if text in BUILTIN_WAKE_MODELS:
        path = models_dir() / f"{text}.tflite"
        if not path.is_file():
            raise WakeModelError(f"built-in wake model {text!r} not found at {path}")
        return path
    looks_like_path = (
        os.sep in text or text.endswith(".tflite") or text.startswith(("~", ".")) or "/" in text
    )
    if not looks_like_path:
        raise WakeModelError(
            f"unknown wake model {text!r}: use one of {', '.join(BUILTIN_WAKE_MODELS)} "
            "or a path to a .tflite file"
        )
    path = Path(text).expanduser()
    if not path.is_file():
        raise WakeModelError(f"wake model file {str(path)!r} does not exist")
    if path.suffix != ".tflite":
        raise WakeModelError(f"wake model {str(path)!r} is not a .tflite file")
    return path


# Runs in a child process: a corrupt model may crash the TFLite loader.
_VALIDATE_SCRIPT = r"""
import json, sys
import numpy as np
import tflite_runtime.interpreter as tflite
interp = tflite.Interpreter(model_path=sys.argv[1], num_threads=1)
inp = interp.get_input_details()[0]
out = interp.get_output_details()[0]
shape_in = [int(x) for x in inp["shape"]]
shape_out = [int(x) for x in out["shape"]]
if len(shape_in) == 3 and shape_in[2] == 96:
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], np.zeros(shape_in, dtype=np.float32))
    interp.invoke()
    score = float(np.asarray(interp.get_tensor(out["index"])).reshape(-1)[0])
else:
    score = None
print(json.dumps({"input": shape_in, "output": shape_out, "score": score}))
"""

_validated: dict[tuple[str, int, int], None] = {}


def validate_model_file(path: str | os.PathLike[str]) -> None:
    """Check that `path` is a loadable openWakeWord wake model; raise WakeModelError if not.

    Loads it in a child process (about 0.1 s) because a corrupt flatbuffer can
    crash TFLite outright. Results are cached per (path, size, mtime).
    """
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise WakeModelError(f"wake model {str(p)!r}: {exc.strerror or exc}") from exc
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key in _validated:
        return
    if st.st_size < 16:
        raise WakeModelError(f"wake model {str(p)!r} is empty or truncated")
    with p.open("rb") as fh:
        header = fh.read(8)
    if header[4:8] != b"TFL3":
        raise WakeModelError(f"wake model {str(p)!r} is not a TFLite model (bad header)")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _VALIDATE_SCRIPT, str(p)],
            capture_output=True,
            text=True,
            timeout=_VALIDATE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WakeModelError(f"could not check wake model {str(p)!r}: {exc}") from exc
    if proc.returncode != 0:
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        last = (proc.stderr.strip().splitlines() or [""])[-1]
        raise WakeModelError(f"wake model {str(p)!r} is corrupt or unusable ({how}): {last}")
    try:
        info = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise WakeModelError(f"wake model {str(p)!r}: checker gave no result") from exc
    shape_in, shape_out = info["input"], info["output"]
    if len(shape_in) != 3 or shape_in[2] != 96 or shape_out != [1, 1]:
        raise WakeModelError(
            f"{str(p)!r} is not an openWakeWord wake model "
            f"(input {shape_in}, output {shape_out}; expected [1, N, 96] -> [1, 1])"
        )
    _validated[key] = None


# -- end-of-phrase estimate (pure) --------------------------------------------


def estimate_phrase_end(
    audio: np.ndarray,
    audio_start_sample: int,
    crossing_sample: float,
    *,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    search_back_ms: int = 550,
    frame_ms: int = 10,
    silence_below_db: float = 25.0,
    noise_margin_db: float = 8.0,
    min_pause_ms: int = 70,
    min_speech_before_ms: int = 200,
    no_pause_lag_ms: int = 240,
    noisy_lag_ms: int = 150,
) -> int:
    """Estimate the capture sample where the wake phrase ended.

    audio: what the wake model heard, starting at `audio_start_sample` and
        ending where the estimate is made (the detector waits one 80 ms frame
        after the threshold crossing so that a pause that has just begun is
        long enough to see); ~1.5-2 s is plenty.
    crossing_sample: interpolated position where the score crossed the threshold.

    Returns the start of the first pause (>= `min_pause_ms` of 10 ms frames at
    least `silence_below_db` under the speech level, after >= 200 ms of mostly
    speech) that begins within `search_back_ms` before the crossing or after
    it. 70 ms is longer than the stop-consonant closures inside words
    (40-60 ms, measured on espeak-ng) and shorter than a comma pause. Without
    such a pause: the crossing minus the lag measured for speech run straight
    on (median 165 ms, 57-422 ms; 240 centres that range), or minus 150 ms
    when the audio is too noisy to see pauses at all.
    """
    fs = sample_rate_hz * frame_ms // 1000
    n_frames = audio.size // fs
    crossing_idx = (crossing_sample - audio_start_sample) / fs
    first_candidate = int(crossing_idx - search_back_ms // frame_ms)
    need_before = min_speech_before_ms // frame_ms
    no_pause = round(crossing_sample - no_pause_lag_ms * sample_rate_hz / 1000)
    if n_frames < 2 or first_candidate < need_before:
        return no_pause
    x = audio[: n_frames * fs].astype(np.float64).reshape(n_frames, fs)
    energy_db = 10.0 * np.log10(np.mean(x * x, axis=1) + 1.0)
    speech_db = float(np.percentile(energy_db[first_candidate:], 95))
    noise_db = float(np.percentile(energy_db, 10))
    threshold = max(speech_db - silence_below_db, noise_db + noise_margin_db)
    if threshold > speech_db - 10.0:  # too noisy to see pauses
        return round(crossing_sample - noisy_lag_ms * sample_rate_hz / 1000)
    silent = energy_db < threshold
    min_pause = max(1, min_pause_ms // frame_ms)
    for i in range(first_candidate, n_frames - min_pause + 1):
        if not silent[i] or silent[i - 1]:
            continue
        if np.count_nonzero(~silent[i - need_before : i]) < 0.75 * need_before:
            continue
        if silent[i : i + min_pause].all():
            return audio_start_sample + i * fs
    return no_pause


# -- detector -----------------------------------------------------------------


class WakeModel(Protocol):
    """What the detector needs of a model: `oww_tflite.TfliteWakeModels`, or a script in tests."""

    def predict(self, x: np.ndarray) -> Mapping[str, float]: ...

    def reset(self) -> None: ...


class WakeWordDetector:
    """Feeds 80 ms frames to an openWakeWord model; emits detections with phrase end.

    thresholds: per model name (the file stem, e.g. "hey_jarvis"); only these
        models can fire.
    refractory_s: after a model fires it cannot fire again for this long
        (its score stays above threshold for ~0.5 s after one phrase).

    A detection is reported one frame (80 ms) after the frame whose score
    crossed the threshold: that frame shows whether a pause followed the
    phrase, which pins down `end_sample` (see the module docstring).
    """

    def __init__(
        self,
        model: WakeModel,
        thresholds: Mapping[str, float],
        *,
        refractory_s: float = DEFAULT_REFRACTORY_S,
        sample_rate_hz: int = SAMPLE_RATE_HZ,
        history_s: float = 2.0,
    ) -> None:
        if not thresholds:
            raise ValueError("at least one wake model threshold is needed")
        for name, th in thresholds.items():
            if not 0.0 < th < 1.0:
                raise ValueError(f"threshold for {name!r} must be in (0, 1), got {th}")
        self._model = model
        self.thresholds = dict(thresholds)
        self._refractory = round(refractory_s * sample_rate_hz)
        self._sample_rate = sample_rate_hz
        self._history_max = round(history_s * sample_rate_hz)
        self._history: deque[np.ndarray] = deque()
        self._history_len = 0
        self._pending = np.empty(0, dtype=np.int16)
        self._pending_start = 0
        self._next_sample: int | None = None
        self._prev_score = dict.fromkeys(self.thresholds, 0.0)
        self._last_fire: dict[str, int | None] = dict.fromkeys(self.thresholds)
        self._due: dict[str, tuple[float, float]] = {}  # model -> (score, crossing sample)
        self.last_scores: dict[str, float] = dict.fromkeys(self.thresholds, 0.0)
        self.peak_scores: dict[str, float] = dict.fromkeys(self.thresholds, 0.0)  # since reset
        self.frames = 0
        self.detections = 0
        self._discontinuities = 0

    @classmethod
    def load(
        cls,
        models: Sequence[str | os.PathLike[str]] = ("hey_jarvis",),
        *,
        threshold: float = DEFAULT_THRESHOLD,
        thresholds: Mapping[str, float] | None = None,
        refractory_s: float = DEFAULT_REFRACTORY_S,
        validate: bool = True,
    ) -> WakeWordDetector:
        """Resolve, check and load the models (slow: loads TFLite models). Call once."""
        # openWakeWord names each model by its file stem; thresholds may use either
        # the configured entry ("hey_jarvis", "/path/my_word.tflite") or the stem.
        stems = {os.fspath(m): resolve_wake_model(m).stem for m in models}
        per_model = dict.fromkeys(stems.values(), threshold)
        for key, th in (thresholds or {}).items():
            stem = stems.get(key, key)
            if stem not in per_model:
                raise WakeModelError(f"threshold given for {key!r}, which is not loaded")
            per_model[stem] = th
        model = load_openwakeword_model(models, validate=validate)
        return cls(model, per_model, refractory_s=refractory_s)

    def reset(self) -> None:
        """Forget all audio context (model buffers, partial frame, refractory)."""
        self._model.reset()
        self._history.clear()
        self._history_len = 0
        self._pending = np.empty(0, dtype=np.int16)
        self._next_sample = None
        self._prev_score = dict.fromkeys(self.thresholds, 0.0)
        self._last_fire = dict.fromkeys(self.thresholds)
        self._due.clear()
        self.peak_scores = dict.fromkeys(self.thresholds, 0.0)

    def process(self, samples: np.ndarray, start_sample: int) -> list[WakeWordDetected]:
        """Feed int16 mono audio starting at capture position `start_sample`."""
        samples = np.asarray(samples, dtype=np.int16).reshape(-1)
        if self._next_sample is not None and start_sample != self._next_sample:
            self._discontinuities += 1
            level = logging.WARNING if self._discontinuities == 1 else logging.DEBUG
            logger.log(
                level, "wake word: stream jumped from %s to %s", self._next_sample, start_sample
            )
            self._pending = np.empty(0, dtype=np.int16)
        if self._pending.size == 0:
            self._pending_start = start_sample
        self._next_sample = start_sample + samples.size
        self._remember(samples)
        self._pending = np.concatenate((self._pending, samples)) if self._pending.size else samples
        detections: list[WakeWordDetected] = []
        while self._pending.size >= FRAME_SAMPLES:
            frame = self._pending[:FRAME_SAMPLES]
            frame_end = self._pending_start + FRAME_SAMPLES
            self._pending = self._pending[FRAME_SAMPLES:]
            self._pending_start = frame_end
            detections.extend(self._score_frame(frame, frame_end))
        if self._pending.size:
            self._pending = self._pending.copy()
        return detections

    def _remember(self, samples: np.ndarray) -> None:
        self._history.append(samples.copy())
        self._history_len += samples.size
        while self._history_len - self._history[0].size >= self._history_max:
            self._history_len -= self._history.popleft().size

    def _score_frame(self, frame: np.ndarray, frame_end: int) -> list[WakeWordDetected]:
        self.frames += 1
        scores = self._model.predict(frame)
        out: list[WakeWordDetected] = []
        # Detections found one frame ago are completed now that 80 ms more audio
        # shows whether a pause followed the phrase.
        for name, (score, crossing) in self._due.items():
            end = self._phrase_end(crossing, frame_end)
            logger.info("wake word %s (score %.3f), phrase ended at sample %d", name, score, end)
            out.append(WakeWordDetected(name, score, end))
        self._due.clear()
        for name, threshold in self.thresholds.items():
            score = float(scores.get(name, 0.0))
            prev = self._prev_score[name]
            self._prev_score[name] = score
            self.last_scores[name] = score
            self.peak_scores[name] = max(self.peak_scores[name], score)
            if score < threshold:
                continue
            last = self._last_fire[name]
            if last is not None and frame_end - last < self._refractory:
                continue
            self._last_fire[name] = frame_end
            self.detections += 1
            rise = score - prev
            frac = 1.0 if rise <= 0 else min(1.0, max(0.0, (threshold - prev) / rise))
            self._due[name] = (score, frame_end - FRAME_SAMPLES + frac * FRAME_SAMPLES)
        return out

    def _phrase_end(self, crossing: float, upto: int) -> int:
        audio = np.concatenate(list(self._history))
        audio_start = (self._next_sample or 0) - audio.size
        # Only audio up to the current frame: the result must not depend on block sizes.
        audio = audio[: max(0, upto - audio_start)]
        return estimate_phrase_end(audio, audio_start, crossing, sample_rate_hz=self._sample_rate)


def load_openwakeword_model(
    models: Sequence[str | os.PathLike[str]],
    *,
    validate: bool = True,
    lean_streaming: bool = True,
) -> WakeModel:
    """Load openWakeWord's TFLite models for the given built-in names or paths.

    Scores equal `openwakeword.Model(..., inference_framework="tflite")`'s, without
    the package `__init__` and its onnxruntime/scipy/sklearn (see `oww_tflite`);
    lean_streaming=False runs openwakeword's own per-frame bookkeeping (a baseline).
    """
    if not models:
        raise WakeModelError("no wake model configured")
    paths = [resolve_wake_model(m) for m in models]
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise WakeModelError(f"wake model names must be unique, got {stems}")
    if any(stem in FEATURE_MODELS for stem in stems):
        raise WakeModelError(f"{FEATURE_MODELS} are feature models, not wake models")
    feature_dir = models_dir()
    melspec = feature_dir / "melspectrogram.tflite"
    embedding = feature_dir / "embedding_model.tflite"
    if validate:
        for p in paths:
            validate_model_file(p)
    from edge_agent.audio.oww_tflite import load_tflite_wake_models

    logger.info("loading wake models %s", ", ".join(stems))
    return load_tflite_wake_models(paths, melspec, embedding, lean_streaming=lean_streaming)

"""openWakeWord's TFLite models run without `import openwakeword` (no onnxruntime, scipy, sklearn).

Why: the package `__init__` of openwakeword 0.6 imports `openwakeword.vad`
(onnxruntime, for a Silero VAD) and `openwakeword.custom_verifier_model` (scipy
and scikit-learn, for training verifiers): a hey_jarvis detector loaded that
way holds 157 MB over numpy's and takes 1.0-1.4 s to load here (this way:
34 MB, 0.2 s), and on aarch64 under QEMU the onnxruntime import crashed.
Running TFLite wake models needs none of the three.

How, using the installed package unmodified:

* The streaming features (melspectrogram and speech-embedding models with their
  buffers) are openwakeword's own `openwakeword.utils.AudioFeatures`.
  `openwakeword/utils.py` begins with `import openwakeword`, which would run the
  package `__init__`; so `import_audio_features` first registers the
  `openwakeword` package module built from the installed package's import spec
  (`importlib.util.module_from_spec`: `__path__`, `__file__`, loader and spec
  set as the import system sets them) *without executing* its `__init__.py`,
  then imports `openwakeword.utils` the ordinary way. utils.py uses the
  package's top-level names only inside functions the appliance never calls
  (model download, bulk prediction).
* One private method of it is overridden: `AudioFeatures` fills its feature
  buffer with the embeddings of 4 s of noise at start (and on reset), as one
  batch of 41 windows. TFLite keeps the tensor arena of the largest batch it
  ran, so that batch alone stays resident as about 26-30 MB (measured).
  `_get_embeddings` here computes the same embeddings one window at a time
  (bit-identical results, measured): about 17 MB instead of 45 MB for them.
* The streaming front end is overridden too (`lean_streaming=True`, what the
  daemon runs; the bench's baseline keeps openwakeword's own). Per 80 ms frame,
  openwakeword's `_streaming_features` copies its 10 s raw-audio deque (160,000
  Python ints) into a list to take its last 1,760 samples, and its TFLite
  melspectrogram wrapper resizes the interpreter and re-allocates its tensors
  on every call (it checks the input against 1,280 samples; the streaming input
  is 1,760). Together about 0.8 ms a frame here (1 % of a core; 1.85 ms a frame
  with them, 1.08 ms without, in a tight loop), all of it bookkeeping. The
  override keeps the last 1,760 samples in a numpy array, resizes the
  interpreter only when the input length changes and keeps the rest of
  openwakeword's algorithm as it is: the melspectrograms, embeddings and scores
  are bit-identical (tests/test_imports.py compares them frame by frame with
  openwakeword's own class).
* The wake models run here as `openwakeword.Model.predict` runs TFLite models
  with one output on 80 ms frames: the newest N embedding frames in, one score
  out, 0.0 for the first five frames after a start or reset.
  tests/test_imports.py pins both: the scores equal `openwakeword.Model`'s on
  the same speech, and none of the three heavy libraries gets imported.

If a future openwakeword moves `AudioFeatures` or changes its interface, loading
fails with `WakeModelError` naming the installed version and the one tested.

Consequence: once this loader has run, `import openwakeword` in the same process
yields that package without its top-level names (`Model`, `VAD`, ...). A feature
that needs them (Silero VAD, custom verifiers, ONNX models) must import them only
when it is configured, by executing the package's `__init__` into the registered
module (`pkg = sys.modules["openwakeword"]; pkg.__spec__.loader.exec_module(pkg)`)
or in a process of its own. If the full package is already imported, it is simply used.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.audio.wakeword import FRAME_SAMPLES, WakeModelError

logger = logging.getLogger(__name__)

TESTED_OPENWAKEWORD = "0.6.0"
HEAVY_MODULES = ("onnxruntime", "scipy", "sklearn")  # what the package __init__ would pull in
WARMUP_FRAMES = 5  # openwakeword.Model.predict reports 0.0 for these after a (re)start
EMBEDDING_SIZE = 96
_AUDIO_FEATURES_METHODS = (
    "__call__",
    "get_features",
    "reset",
    "_get_melspectrogram",  # used by the overrides below
    "_get_embeddings",  # overridden below
    "_buffer_raw_data",  # overridden below (lean streaming)
    "_streaming_melspectrogram",  # overridden below (lean streaming)
    "_streaming_features",  # kept; it calls the two above
)
_import_lock = threading.Lock()


def _installed_version() -> str:
    try:
        from importlib.metadata import version

        return version("openwakeword")
    except Exception:  # only decorates an error message
        return "unknown"


def _layout_error(what: str) -> WakeModelError:
    return WakeModelError(
        f"openwakeword {_installed_version()} (edge-agent was tested with "
        f"{TESTED_OPENWAKEWORD}): {what}; see edge_agent/audio/oww_tflite.py"
    )


def import_audio_features() -> type:
    """Return `openwakeword.utils.AudioFeatures` without running the package `__init__`."""
    with _import_lock:
        heavy_before = {m for m in HEAVY_MODULES if m in sys.modules}
        registered = None
        if "openwakeword" not in sys.modules:
            spec = importlib.util.find_spec("openwakeword")
            if spec is None or spec.loader is None or not spec.submodule_search_locations:
                raise WakeModelError("the openwakeword package is not installed")
            registered = importlib.util.module_from_spec(spec)  # __init__.py is not executed
            sys.modules["openwakeword"] = registered
        try:
            features = _audio_features_class()
        except WakeModelError:
            if registered is not None and sys.modules.get("openwakeword") is registered:
                del sys.modules["openwakeword"]  # leave no package without its names behind
                sys.modules.pop("openwakeword.utils", None)
            raise
        heavy_now = sorted(m for m in HEAVY_MODULES if m in sys.modules and m not in heavy_before)
        if heavy_now:
            logger.warning(
                "importing openwakeword.utils now imports %s (memory and start time grow)",
                ", ".join(heavy_now),
            )
        return features


def _audio_features_class() -> type:
    try:
        features = importlib.import_module("openwakeword.utils").AudioFeatures
    except Exception as exc:
        raise _layout_error(f"cannot import openwakeword.utils.AudioFeatures ({exc!r})") from exc
    defined = set().union(*(vars(k) for k in features.__mro__ if k is not object))
    for method in _AUDIO_FEATURES_METHODS:
        if method not in defined:
            raise _layout_error(f"AudioFeatures has no {method}()")
    return features


def _one_window_at_a_time(audio_features: type) -> type:
    """`AudioFeatures` whose noise-filled start computes one embedding window per call."""

    class OneWindowAudioFeatures(audio_features):  # type: ignore[misc,valid-type]
        def _get_embeddings(
            self, x: np.ndarray, window_size: int = 76, step_size: int = 8, **kwargs: Any
        ) -> np.ndarray:
            spec = self._get_melspectrogram(x, **kwargs)
            return np.array(
                [
                    self.embedding_model_predict(
                        spec[i : i + window_size][None, :, :, None].astype(np.float32)
                    )
                    for i in range(0, spec.shape[0] - window_size + 1, step_size)
                ]
            )

    return OneWindowAudioFeatures


_MEL_CONTEXT_SAMPLES = 160 * 3  # what openwakeword's streaming melspectrogram prepends


def _lean_streaming(audio_features: type) -> type:
    """`AudioFeatures` without the per-frame bookkeeping (see the module docstring).

    Only what the streaming path reads is replaced: the raw-audio history (the last
    ``n + 480`` samples are all `_streaming_melspectrogram` ever takes) and the
    melspectrogram interpreter's resizing. `_streaming_features`, the embeddings and
    the buffers' lengths are openwakeword's own code.
    """

    class LeanStreamingAudioFeatures(audio_features):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._raw_tail = np.zeros(0, dtype=np.int16)
            self._raw_keep = FRAME_SAMPLES + _MEL_CONTEXT_SAMPLES
            super().__init__(*args, **kwargs)
            self.melspec_model_predict = self._melspec_predictor(self.melspec_model)

        @staticmethod
        def _melspec_predictor(interpreter: Any) -> Any:
            """The TFLite melspectrogram, resized only when the input length changes."""
            input_index = interpreter.get_input_details()[0]["index"]
            output_index = interpreter.get_output_details()[0]["index"]
            size = [int(interpreter.get_input_details()[0]["shape"][1])]

            def predict(x: np.ndarray) -> np.ndarray:
                if x.shape[1] != size[0]:
                    interpreter.resize_tensor_input(0, [1, x.shape[1]], strict=True)
                    interpreter.allocate_tensors()
                    size[0] = x.shape[1]
                interpreter.set_tensor(input_index, x)
                interpreter.invoke()
                return interpreter.get_tensor(output_index)

            return predict

        def _buffer_raw_data(self, x: Any) -> None:
            x = np.asarray(x, dtype=np.int16)
            # The longest tail ever read: everything since the last melspectrogram plus
            # its context (one 80 ms frame per predict in this module; more is kept
            # when a caller buffers more).
            self._raw_keep = max(
                self._raw_keep, self.accumulated_samples + len(x) + _MEL_CONTEXT_SAMPLES
            )
            joined = np.concatenate((self._raw_tail, x)) if len(self._raw_tail) else x
            self._raw_tail = joined[-self._raw_keep :]

        def _streaming_melspectrogram(self, n_samples: int) -> None:
            if len(self._raw_tail) < 400:
                raise ValueError("the melspectrogram needs at least 400 samples (25 ms)")
            tail = self._raw_tail[-n_samples - _MEL_CONTEXT_SAMPLES :]
            self.melspectrogram_buffer = np.vstack(
                (self.melspectrogram_buffer, self._get_melspectrogram(tail))
            )
            if self.melspectrogram_buffer.shape[0] > self.melspectrogram_max_len:
                self.melspectrogram_buffer = self.melspectrogram_buffer[
                    -self.melspectrogram_max_len :, :
                ]

        def reset(self) -> None:
            self._raw_tail = np.zeros(0, dtype=np.int16)
            super().reset()

    return LeanStreamingAudioFeatures


@dataclass(frozen=True)
class _TfliteWakeModel:
    name: str
    interpreter: Any
    input_index: int
    output_index: int
    feature_frames: int


class TfliteWakeModels:
    """Scores 80 ms int16 frames with openWakeWord wake models (the detector's `WakeModel`).

    features: an `openwakeword.utils.AudioFeatures`; interpreters: model name ->
    allocated `tflite_runtime` interpreter of a wake model ([1, N, 96] -> [1, 1]).
    """

    def __init__(self, features: Any, interpreters: Mapping[str, Any]) -> None:
        self._features = features
        self._models: list[_TfliteWakeModel] = []
        for name, interp in interpreters.items():
            inp = interp.get_input_details()[0]
            out = interp.get_output_details()[0]
            shape_in = [int(x) for x in inp["shape"]]
            shape_out = [int(x) for x in out["shape"]]
            if len(shape_in) != 3 or shape_in[2] != EMBEDDING_SIZE or shape_out != [1, 1]:
                raise WakeModelError(
                    f"{name!r} is not an openWakeWord wake model "
                    f"(input {shape_in}, output {shape_out}; expected [1, N, 96] -> [1, 1])"
                )
            self._models.append(
                _TfliteWakeModel(name, interp, inp["index"], out["index"], shape_in[1])
            )
        self._frames_since_reset = 0

    def predict(self, x: np.ndarray) -> dict[str, float]:
        """Scores of one 80 ms frame (exactly FRAME_SAMPLES int16 samples)."""
        if x.shape != (FRAME_SAMPLES,):
            raise ValueError(f"frames must be {FRAME_SAMPLES} samples, got shape {x.shape}")
        prepared = self._features(x)
        if prepared != FRAME_SAMPLES:
            raise _layout_error(
                f"AudioFeatures prepared {prepared} samples for one {FRAME_SAMPLES}-sample frame"
            )
        warm = self._frames_since_reset >= WARMUP_FRAMES
        self._frames_since_reset += 1
        scores: dict[str, float] = {}
        for m in self._models:
            if not warm:
                scores[m.name] = 0.0
                continue
            m.interpreter.set_tensor(m.input_index, self._features.get_features(m.feature_frames))
            m.interpreter.invoke()
            scores[m.name] = float(m.interpreter.get_tensor(m.output_index).reshape(-1)[0])
        return scores

    def reset(self) -> None:
        """Forget the audio context (feature buffers) and restart the warm-up."""
        self._features.reset()
        self._frames_since_reset = 0


def load_tflite_wake_models(
    wake_models: Sequence[Path],
    melspec_model: Path,
    embedding_model: Path,
    *,
    lean_streaming: bool = True,
) -> TfliteWakeModels:
    """Load the feature models and the wake models (slow: TFLite, ~0.1-0.3 s).

    lean_streaming=False keeps openwakeword's own streaming front end (the bench's
    baseline, and the reference the lean one is tested against)."""
    audio_features = _one_window_at_a_time(import_audio_features())
    if lean_streaming:
        audio_features = _lean_streaming(audio_features)
    import tflite_runtime.interpreter as tflite

    interpreters = {}
    for path in wake_models:
        interp = tflite.Interpreter(model_path=str(path), num_threads=1)
        interp.allocate_tensors()
        interpreters[path.stem] = interp
    try:
        features = audio_features(
            melspec_model_path=str(melspec_model),
            embedding_model_path=str(embedding_model),
            inference_framework="tflite",
        )
    except TypeError as exc:
        raise _layout_error(f"AudioFeatures(...) refused its arguments ({exc})") from exc
    probe = features.get_features(16)
    if np.shape(probe) != (1, 16, EMBEDDING_SIZE):
        raise _layout_error(f"AudioFeatures.get_features(16) has shape {np.shape(probe)}")
    return TfliteWakeModels(features, interpreters)

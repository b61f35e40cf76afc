"""Wake word adapter: model files, the phrase-end estimate, the detector logic, the real model."""

from __future__ import annotations

import logging
import random
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from edge_agent.audio.wakeword import (
    BUILTIN_WAKE_MODELS,
    FRAME_SAMPLES,
    WakeModelError,
    WakeWordDetector,
    estimate_phrase_end,
    load_openwakeword_model,
    models_dir,
    resolve_wake_model,
    validate_model_file,
)
from edge_agent.core.events import WakeWordDetected
from edge_agent_devkit.rig import speech

RATE = 16000


def ms(n: float) -> int:
    return round(n * RATE / 1000)


# -- model files ---------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN_WAKE_MODELS)
def test_builtin_models_resolve_and_validate(name: str) -> None:
    path = resolve_wake_model(name)
    assert path == models_dir() / f"{name}.tflite"
    validate_model_file(path)


def test_unknown_name_lists_the_builtins() -> None:
    with pytest.raises(WakeModelError) as err:
        resolve_wake_model("hey_computer")
    for name in BUILTIN_WAKE_MODELS:
        assert name in str(err.value)


def test_missing_and_wrong_files(tmp_path: Path) -> None:
    with pytest.raises(WakeModelError, match="does not exist"):
        resolve_wake_model(str(tmp_path / "nope.tflite"))
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"x" * 100)
    with pytest.raises(WakeModelError, match=r"not a \.tflite"):
        resolve_wake_model(str(onnx))
    custom = tmp_path / "my_word.tflite"
    shutil.copy(models_dir() / "alexa.tflite", custom)
    assert resolve_wake_model(str(custom)) == custom


def _corrupt_copies(tmp_path: Path) -> dict[str, Path]:
    original = (models_dir() / "hey_jarvis.tflite").read_bytes()
    flipped = bytearray(original)
    rnd = random.Random(1)
    for _ in range(200):
        flipped[rnd.randrange(100, len(flipped))] ^= 0xFF
    variants = {
        "truncated": original[:20000],
        "bit_flipped": bytes(flipped),
        "random": bytes(rnd.randrange(256) for _ in range(4096)),
        "empty": b"",
        "text": b"this is not a model\n" * 10,
    }
    paths = {}
    for name, data in variants.items():
        p = tmp_path / f"{name}.tflite"
        p.write_bytes(data)
        paths[name] = p
    return paths


def test_corrupt_models_are_rejected_without_crashing(tmp_path: Path) -> None:
    """Truncated and bit-flipped models segfault the TFLite loader; validation survives them."""
    for name, path in _corrupt_copies(tmp_path).items():
        with pytest.raises(WakeModelError):
            validate_model_file(path)
        assert name  # each variant was checked in a child process; we are still alive


def test_feature_model_is_not_a_wake_model(tmp_path: Path) -> None:
    p = tmp_path / "melspec_renamed.tflite"
    shutil.copy(models_dir() / "melspectrogram.tflite", p)
    with pytest.raises(WakeModelError, match="not an openWakeWord wake model"):
        validate_model_file(p)
    with pytest.raises(WakeModelError, match=r"does not exist|No such file"):
        validate_model_file(tmp_path / "missing.tflite")


def test_importing_the_adapters_does_not_import_openwakeword() -> None:
    code = (
        "import sys, edge_agent.audio.wakeword, edge_agent.audio.ears; "
        "print('openwakeword' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"


# -- phrase end estimate (pure) --------------------------------------------------


def tone(duration_ms: float, amplitude: int = 3000) -> np.ndarray:
    t = np.arange(ms(duration_ms)) / RATE
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


def test_end_is_the_first_pause_after_speech() -> None:
    # speech 700 ms, pause 200 ms, more speech 400 ms; the score crossed 150 ms into
    # the following speech; the estimate is made 80 ms later.
    audio = speech.concat(speech.silence(1.0), tone(700), speech.silence(0.2), tone(400))
    phrase_end = ms(1700)
    crossing = phrase_end + ms(350)
    end = estimate_phrase_end(audio[: crossing + ms(80)], 0, crossing)
    assert end == phrase_end
    # Positions are absolute: the same audio later in the stream.
    assert estimate_phrase_end(audio[: crossing + ms(80)], 123_456, crossing + 123_456) == (
        phrase_end + 123_456
    )


def test_short_closures_are_not_pauses() -> None:
    # A 40 ms gap (a stop consonant) inside the phrase is skipped; the real pause wins.
    audio = speech.concat(
        speech.silence(1.0), tone(400), speech.silence(0.04), tone(300), speech.silence(0.3)
    )
    phrase_end = ms(1000 + 400 + 40 + 300)
    assert estimate_phrase_end(audio, 0, phrase_end + ms(100)) == phrase_end


def test_no_pause_falls_back_to_the_crossing_minus_the_measured_lag() -> None:
    audio = speech.concat(speech.silence(1.0), tone(1500))
    crossing = ms(2300)
    assert estimate_phrase_end(audio, 0, crossing) == crossing - ms(240)


def test_noisy_audio_falls_back_to_the_shorter_lag() -> None:
    rng = np.random.default_rng(0)
    audio = speech.to_int16(rng.standard_normal(ms(2500)) * 3000)
    crossing = ms(2300)
    assert estimate_phrase_end(audio, 0, crossing) == crossing - ms(150)


# -- detector logic with a scripted model ------------------------------------------


class ScriptedModel:
    """Returns one score dict per predict() call; records what it was given."""

    def __init__(self, scores: list[Mapping[str, float]]) -> None:
        self._scores = list(scores)
        self.inputs: list[np.ndarray] = []
        self.resets = 0

    def predict(self, x: np.ndarray) -> Mapping[str, float]:
        self.inputs.append(x.copy())
        return self._scores[len(self.inputs) - 1] if len(self.inputs) <= len(self._scores) else {}

    def reset(self) -> None:
        self.resets += 1


def feed(det: WakeWordDetector, audio: np.ndarray, block: int = 160, start: int = 0):
    out = []
    for i in range(0, audio.size - block + 1, block):
        for d in det.process(audio[i : i + block], start + i):
            out.append((start + i + block, d))
    return out


def test_frames_are_80_ms_of_contiguous_audio_whatever_the_block_size() -> None:
    audio = (np.arange(ms(1000)) % 3000).astype(np.int16)
    for block in (160, 480, 1000):
        model = ScriptedModel([])
        det = WakeWordDetector(model, {"hey_jarvis": 0.5})
        feed(det, audio, block)
        n = (audio.size // block * block) // FRAME_SAMPLES
        assert len(model.inputs) == n
        assert np.array_equal(np.concatenate(model.inputs), audio[: n * FRAME_SAMPLES])


def test_detection_reports_model_score_and_phrase_end_one_frame_later() -> None:
    # A "phrase" ending at 2.56 s (frame aligned), a pause after it; the score crosses
    # the threshold in the frame ending at 2.80 s.
    audio = speech.concat(speech.silence(1.86), tone(700), speech.silence(1.0))
    phrase_end = ms(2560)
    crossing_frame = ms(2800) // FRAME_SAMPLES - 1
    scores = [{"hey_jarvis": 0.0} for _ in range(crossing_frame)]
    scores += [{"hey_jarvis": 0.9}, {"hey_jarvis": 0.95}] + [{"hey_jarvis": 0.0}] * 20
    det = WakeWordDetector(ScriptedModel(scores), {"hey_jarvis": 0.5})
    hits = feed(det, audio)
    assert len(hits) == 1
    emitted_at, d = hits[0]
    assert d == WakeWordDetected("hey_jarvis", pytest.approx(0.9), phrase_end)
    assert emitted_at == ms(2800) + FRAME_SAMPLES  # one frame after the crossing
    assert det.detections == 1


def test_refractory_and_per_model_thresholds() -> None:
    frames = 80
    scores: list[dict[str, float]] = [{"a": 0.0, "b": 0.0} for _ in range(frames)]
    for k in (10, 20, 45):  # 0.8 s after the first (refractory), then 2.8 s after it
        scores[k] = {"a": 0.7, "b": 0.0}
    scores[60] = {"a": 0.0, "b": 0.8}  # under b's threshold
    scores[70] = {"a": 0.0, "b": 0.95}
    det = WakeWordDetector(ScriptedModel(scores), {"a": 0.5, "b": 0.9}, refractory_s=2.0)
    hits = feed(det, np.zeros(frames * FRAME_SAMPLES, dtype=np.int16))
    assert [(d.model, round(d.score, 2)) for _, d in hits] == [("a", 0.7), ("a", 0.7), ("b", 0.95)]
    assert [at // FRAME_SAMPLES for at, _ in hits] == [12, 47, 72]


def test_reset_forgets_context_and_refractory() -> None:
    scores = [{"w": 0.0}] * 5 + [{"w": 0.9}, {"w": 0.0}] + [{"w": 0.9}, {"w": 0.0}, {"w": 0.0}]
    model = ScriptedModel(scores)
    det = WakeWordDetector(model, {"w": 0.5}, refractory_s=5.0)
    audio = np.zeros(7 * FRAME_SAMPLES, dtype=np.int16)
    assert len(feed(det, audio)) == 1
    det.reset()
    assert model.resets == 1
    more = feed(det, np.zeros(3 * FRAME_SAMPLES, dtype=np.int16), start=audio.size)
    assert len(more) == 1  # refractory forgotten


def test_discontinuity_drops_the_partial_frame(caplog: pytest.LogCaptureFixture) -> None:
    model = ScriptedModel([])
    det = WakeWordDetector(model, {"w": 0.5})
    with caplog.at_level(logging.WARNING):
        det.process(np.ones(1000, dtype=np.int16), 0)
        det.process(np.full(1280, 2, dtype=np.int16), 50_000)
        det.process(np.full(10, 2, dtype=np.int16), 90_000)
    assert len(model.inputs) == 1
    assert np.all(model.inputs[0] == 2)
    assert sum("jumped" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("thresholds", [{}, {"w": 0.0}, {"w": 1.0}])
def test_invalid_thresholds(thresholds: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        WakeWordDetector(ScriptedModel([]), thresholds)


# -- the real model ------------------------------------------------------------------

needs_espeak = pytest.mark.skipif(not speech.espeak_available(), reason="espeak-ng missing")


@pytest.fixture(scope="module")
def jarvis_model():
    """One openWakeWord model for the module (loading costs ~0.2 s)."""
    return load_openwakeword_model(["hey_jarvis"])


def test_load_maps_thresholds_by_name_or_path(tmp_path: Path) -> None:
    custom = tmp_path / "kitchen.tflite"
    shutil.copy(models_dir() / "alexa.tflite", custom)
    det = WakeWordDetector.load(
        ["hey_jarvis", str(custom)], threshold=0.6, thresholds={str(custom): 0.8}
    )
    assert det.thresholds == {"hey_jarvis": 0.6, "kitchen": 0.8}
    with pytest.raises(WakeModelError, match="not loaded"):
        WakeWordDetector.load(["hey_jarvis"], thresholds={"alexa": 0.7})
    same_stem = tmp_path / "alexa.tflite"
    shutil.copy(models_dir() / "alexa.tflite", same_stem)
    with pytest.raises(WakeModelError, match="unique"):
        load_openwakeword_model(["alexa", str(same_stem)])


def test_load_refuses_a_corrupt_model_before_touching_it(tmp_path: Path) -> None:
    bad = _corrupt_copies(tmp_path)["bit_flipped"]
    with pytest.raises(WakeModelError, match="corrupt"):
        WakeWordDetector.load([str(bad)])


@needs_espeak
@pytest.mark.parametrize(("voice", "speed"), [("en-us", 150), ("en-gb-scotland", 175)])
def test_detector_scores_equal_the_bare_model(jarvis_model, voice: str, speed: int) -> None:
    clip = speech.wake_phrase_clip(voice, speed)
    jarvis_model.reset()
    bare = [
        float(jarvis_model.predict(clip.audio[i : i + FRAME_SAMPLES])["hey_jarvis"])
        for i in range(0, clip.audio.size - FRAME_SAMPLES + 1, FRAME_SAMPLES)
    ]
    first = next(k for k, s in enumerate(bare) if s >= 0.5)
    det = WakeWordDetector(jarvis_model, {"hey_jarvis": 0.5})
    det.reset()
    hits = feed(det, clip.audio)
    assert len(hits) == 1
    emitted_at, d = hits[0]
    assert d.score == pytest.approx(bare[first], abs=1e-6)
    assert emitted_at == (first + 2) * FRAME_SAMPLES
    assert abs(d.end_sample - clip.wake_end) <= ms(200)

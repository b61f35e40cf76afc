"""The wake word runs on openwakeword's code without its package __init__: no onnxruntime,
scipy or scikit-learn in the daemon, the same scores as `openwakeword.Model`, and a loud
error if a future openwakeword changes the layout this relies on."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent_devkit.rig import speech
from edge_agent_devkit.rig.appliance import Appliance, ApplianceOptions

HEAVY = ("onnxruntime", "scipy", "sklearn")
# Shared objects of the heavy libraries as they appear in /proc/<pid>/maps (the wheels
# keep their bundled libraries in "<name>.libs" folders).
HEAVY_MAPPED = re.compile(r"/(onnxruntime|scipy|sklearn|scikit_learn)(/|\.libs/)")

needs_espeak = pytest.mark.skipif(not speech.espeak_available(), reason="espeak-ng missing")


def run_python(code: str, *, env: dict[str, str] | None = None) -> str:
    """Run `code` in a fresh interpreter (nothing imported yet); return its last stdout line."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


@needs_espeak
def test_detecting_the_wake_word_imports_none_of_the_heavy_libraries(tmp_path: Path) -> None:
    clip = speech.wake_phrase_clip("en-us", 150)
    np.save(tmp_path / "clip.npy", clip.audio)
    out = run_python(
        f"""
        import json, sys
        import numpy as np
        from edge_agent.audio.wakeword import WakeWordDetector
        audio = np.load({str(tmp_path / "clip.npy")!r})
        det = WakeWordDetector.load(["hey_jarvis"])
        hits = []
        for i in range(0, audio.size - 160 + 1, 160):
            hits += det.process(audio[i : i + 160], i)
        print(json.dumps({{
            "hits": [[h.model, h.score] for h in hits],
            "peak": det.peak_scores["hey_jarvis"],
            "imported": sorted(m for m in {HEAVY!r} if m in sys.modules),
            "openwakeword_utils": "openwakeword.utils" in sys.modules,
        }}))
        """
    )
    result = json.loads(out)
    assert [name for name, _ in result["hits"]] == ["hey_jarvis"]
    assert result["hits"][0][1] >= 0.5
    assert result["peak"] > 0.9
    assert result["openwakeword_utils"]  # the installed package's code did the work
    assert result["imported"] == []


_REFERENCE = """
import json, sys
import numpy as np
import openwakeword  # the whole package, __init__ and all: the reference
from edge_agent.audio.wakeword import models_dir
d = models_dir()
audio = np.load(sys.argv[1])
np.random.seed(1234)
model = openwakeword.Model(
    wakeword_models=[str(d / "hey_jarvis.tflite")],
    inference_framework="tflite",
    melspec_model_path=str(d / "melspectrogram.tflite"),
    embedding_model_path=str(d / "embedding_model.tflite"),
)
scores = []
for run in range(2):
    if run:
        np.random.seed(99)
        model.reset()
    scores.append([
        float(model.predict(audio[i : i + 1280])["hey_jarvis"])
        for i in range(0, audio.size - 1280 + 1, 1280)
    ])
heavy = [m for m in ("onnxruntime", "scipy", "sklearn") if m in sys.modules]
print(json.dumps({"scores": scores, "heavy": heavy}))
"""


@needs_espeak
@pytest.mark.parametrize(("voice", "speed"), [("en-us", 150), ("en-gb-scotland", 175)])
def test_scores_equal_openwakeword_model_from_the_first_frame_and_after_reset(
    tmp_path: Path, voice: str, speed: int
) -> None:
    """Same seed for the noise openwakeword puts in its feature buffer at start and at
    reset: every frame's score equals the full package's `Model.predict`, warm-up included."""
    from edge_agent.audio.wakeword import FRAME_SAMPLES, load_openwakeword_model

    clip = speech.wake_phrase_clip(voice, speed)
    path = tmp_path / "clip.npy"
    np.save(path, clip.audio)
    proc = subprocess.run(
        [sys.executable, "-c", _REFERENCE, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = json.loads(proc.stdout.strip().splitlines()[-1])
    assert reference["heavy"] == list(HEAVY)  # it really was the full package

    np.random.seed(1234)
    model = load_openwakeword_model(["hey_jarvis"])
    ours = []
    for run in range(2):
        if run:
            np.random.seed(99)
            model.reset()
        ours.append(
            [
                model.predict(clip.audio[i : i + FRAME_SAMPLES])["hey_jarvis"]
                for i in range(0, clip.audio.size - FRAME_SAMPLES + 1, FRAME_SAMPLES)
            ]
        )
    for got, want in zip(ours, reference["scores"], strict=True):
        assert len(got) == len(want) > 20
        assert got[:5] == [0.0] * 5  # openwakeword's warm-up
        assert max(want) > 0.9  # the phrase is in there
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@needs_espeak
def test_the_lean_front_end_computes_what_openwakeword_computes() -> None:
    """The daemon's streaming front end (no 10 s deque copied per frame, no interpreter
    re-allocation) against openwakeword's own on noise, two wake phrases and a reset:
    every score, melspectrogram row and embedding bit for bit."""
    from edge_agent.audio.wakeword import FRAME_SAMPLES, load_openwakeword_model

    rng = np.random.default_rng(21)
    noise = (rng.standard_normal(16000 * 12) * 40).astype(np.int16)
    audio = np.concatenate(
        (
            noise,
            speech.wake_phrase_clip("en-us", 150).audio,
            noise[: 16000 * 2],
            speech.wake_phrase_clip("en-gb-scotland", 175).audio,
        )
    )
    frames = audio[: audio.size // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)
    models = {}
    for lean in (False, True):
        np.random.seed(77)  # the noise openwakeword fills its feature buffer with
        models[lean] = load_openwakeword_model(["hey_jarvis"], lean_streaming=lean)
    assert type(models[True]._features) is not type(models[False]._features)
    scores: dict[bool, list[float]] = {False: [], True: []}
    for i, frame in enumerate(frames):
        if i == len(frames) // 2:
            for lean in (False, True):
                np.random.seed(78)
                models[lean].reset()
        for lean in (False, True):
            scores[lean].append(models[lean].predict(frame)["hey_jarvis"])
    assert scores[True] == scores[False]
    assert max(scores[True]) > 0.9  # a wake phrase was heard
    stock, lean_features = models[False]._features, models[True]._features
    assert np.array_equal(lean_features.melspectrogram_buffer, stock.melspectrogram_buffer)
    assert np.array_equal(lean_features.feature_buffer, stock.feature_buffer)


def _fake_openwakeword(root: Path, utils_source: str) -> dict[str, str]:
    """A package named openwakeword whose __init__ fails if executed; env that finds it first."""
    pkg = root / "openwakeword"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('package __init__ executed')\n")
    (pkg / "utils.py").write_text(textwrap.dedent(utils_source))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    return env


def test_the_package_init_is_not_executed(tmp_path: Path) -> None:
    env = _fake_openwakeword(
        tmp_path,
        """
        import openwakeword  # what the real utils.py does first

        class AudioFeatures:
            def __call__(self, x): ...
            def get_features(self, n): ...
            def reset(self): ...
            def _get_melspectrogram(self, x): ...
            def _get_embeddings(self, x): ...
            def _buffer_raw_data(self, x): ...
            def _streaming_melspectrogram(self, n): ...
            def _streaming_features(self, x): ...

        PACKAGE_FILE = openwakeword.__file__
        """,
    )
    out = run_python(
        """
        import sys
        from edge_agent.audio.oww_tflite import import_audio_features
        cls = import_audio_features()
        utils = sys.modules["openwakeword.utils"]
        print(cls.__name__, utils.PACKAGE_FILE.endswith("openwakeword/__init__.py"))
        """,
        env=env,
    )
    assert out == "AudioFeatures True"


@pytest.mark.parametrize(
    ("utils_source", "says"),
    [
        ("class Features:\n    pass\n", "cannot import openwakeword.utils.AudioFeatures"),
        ("class AudioFeatures:\n    def reset(self): ...\n", "AudioFeatures has no __call__()"),
        (
            "class AudioFeatures:\n"
            + "".join(
                f"    def {name}(self, *a): ...\n"
                for name in (
                    "__call__",
                    "get_features",
                    "reset",
                    "_get_melspectrogram",
                    "_get_embeddings",
                    "_buffer_raw_data",
                    "_streaming_features",
                )
            ),
            "AudioFeatures has no _streaming_melspectrogram()",
        ),
        ("import no_such_module_anywhere\n", "No module named 'no_such_module_anywhere'"),
    ],
)
def test_a_changed_layout_fails_loudly(tmp_path: Path, utils_source: str, says: str) -> None:
    env = _fake_openwakeword(tmp_path, utils_source)
    out = run_python(
        """
        import sys
        from edge_agent.audio.wakeword import WakeModelError, load_openwakeword_model
        try:
            load_openwakeword_model(["hey_jarvis"], validate=False)
        except WakeModelError as exc:
            print("openwakeword" in sys.modules, exc)
        """,
        env=env,
    )
    assert out.startswith("False ")  # the half-registered package is not left behind
    assert says in out
    assert "tested with 0.6.0" in out


@needs_espeak
@pytest.mark.timeout(240)
def test_the_daemon_maps_none_of_the_heavy_libraries_through_a_conversation(
    tmp_path: Path,
) -> None:
    """The real daemon: start, wake word, a question, the reply; then its memory map."""
    wake = speech.trim(speech.synthesize("hey jarvis", voice="en-us"))
    question = speech.trim(speech.synthesize("what time is it", voice="en-us"))
    clip = speech.concat(speech.silence(0.8), wake, speech.silence(0.3), question)
    clip = speech.concat(clip, speech.silence(0.5))
    opts = ApplianceOptions(emulator_args=["--no-espeak"])
    with Appliance(tmp_path, opts) as app:
        app.start()
        assert app.proc is not None
        t0 = time.monotonic()
        app.say(clip)
        assert app.wait_log(r"wake word hey_jarvis", 30, t0), app.log_text()[-3000:]
        assert app.wait_state("follow_up", 60, t0), app.log_text()[-3000:]
        maps = Path(f"/proc/{app.proc.pid}/maps").read_text()
        app.stop()
    mapped = {m.group(0) for m in HEAVY_MAPPED.finditer(maps)}
    assert mapped == set()
    # Not vacuous: the map does list the libraries the wake word runs on.
    assert "/tflite_runtime/" in maps
    assert "/numpy/" in maps

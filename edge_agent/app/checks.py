"""Checks of a valid config against the machine: things the pure loader cannot see."""

from __future__ import annotations

from edge_agent.config import Config, resolve_path


def model_problems(cfg: Config) -> list[str]:
    """Load each custom wake word model (in a child process: a corrupt file can crash
    TFLite) so a broken model is a config error, not a daemon that dies at start."""
    from edge_agent.audio.wakeword import WakeModelError, validate_model_file

    problems = []
    for name in cfg.wake_word.models:
        if name.endswith((".tflite", ".onnx")) or "/" in name:
            path = resolve_path(cfg, name)
            try:
                validate_model_file(path)
            except WakeModelError as exc:
                problems.append(f"{cfg.source}:wake_word.models: {exc}")
    return problems

"""Checks of a valid config against the machine: things the pure loader cannot see."""

from __future__ import annotations

from edge_agent.config import Config, resolve_path


def model_problems(cfg: Config, *, builtins: bool = False) -> list[str]:
    """Load each custom wake word model (in a child process: a corrupt file can crash
    TFLite) so a broken model is a config error, not a daemon that dies at start.

    builtins: check the built-in models too (the daemon does, at start, so that the
    models it then loads are all known good; `check-config` looks at the user's files).
    """
    from edge_agent.audio.wakeword import WakeModelError, resolve_wake_model, validate_model_file

    problems = []
    for name in cfg.wake_word.models:
        is_file = name.endswith((".tflite", ".onnx")) or "/" in name
        if not (is_file or builtins):
            continue
        try:
            validate_model_file(resolve_path(cfg, name) if is_file else resolve_wake_model(name))
        except WakeModelError as exc:
            problems.append(f"{cfg.source}:wake_word.models: {exc}")
    return problems

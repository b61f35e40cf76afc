"""Configuration: frozen dataclasses, one per section of config.toml, and their validation.

Pure: no device or network I/O. Loading reads the file (and checks that referenced
files exist); everything else is a function of the parsed TOML. Every problem is
reported as ``file:key: reason`` and all problems are reported at once, so a person
editing config.toml over SSH fixes everything in one go.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
import types
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from edge_agent.live.profiles import DEFAULT_MODEL, Support, ThinkingForm, choose_profile
from edge_agent.quoting import short_repr

BUILTIN_WAKE_MODELS = ("hey_jarvis", "alexa", "hey_mycroft", "hey_rhasspy", "okay_nabu")
BUILTIN_TOOLS = (
    "get_time",
    "set_timer",
    "list_timers",
    "cancel_timer",
    "get_volume",
    "set_volume",
    "end_conversation",
    "device_status",
)
# A model name as the API spells it, with or without the "models/" prefix.
MODEL_NAME_PATTERN = r"^(models/)?[a-z0-9][a-z0-9.\-]*$"
THINKING_LEVELS = ("minimal", "low", "medium", "high")
# A function name the model can call: letters, digits and single underscores, at most 64
# characters ("__" is kept for the "<server>__<tool>" names of MCP tools).
FUNCTION_NAME_PATTERN = r"^(?!.*__)[A-Za-z][A-Za-z0-9_]{0,63}$"
# An MCP server's name is the prefix of its tools' names: short, lower case, no "__".
MCP_SERVER_NAME_PATTERN = r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$"
# Keys people reach for to put a secret in config.toml; each gets a pointed message.
# Keepalive. The Gemini service answers pings slowly (8-30 s measured): a pong timeout
# shorter than that ends healthy sessions, so check-config refuses one when base_url is
# the service. The field floors (5 s) are for a local gateway or emulator that answers at
# once, where tests find a dead link in interval + timeout; pinging more often than every
# 5 s finds nothing sooner on a Pi's Wi-Fi and only adds traffic.
SERVICE_MIN_PING_TIMEOUT_S = 30.0
GEMINI_SERVICE_HOST_SUFFIX = "googleapis.com"
SECRET_KEYS = ("token", "bearer_token", "access_token", "api_key", "password", "headers")
MAX_CONFIG_BYTES = 1_000_000  # a config.toml is a few kB: anything this big is the wrong file


def _f(default: Any, doc: str = "", **rules: Any) -> Any:
    """A dataclass field carrying its validation rules (min, max, choices, path, pin)."""
    return field(default=default, metadata={"doc": doc, **rules})


@dataclass(frozen=True)
class GeminiConfig:
    model: str = _f(DEFAULT_MODEL, pattern=MODEL_NAME_PATTERN)
    # Tried in order when the service says `model` is gone (retired); used by the session.
    fallback_models: tuple[str, ...] = _f((), model_names=True)
    voice: str = _f("Puck", nonempty=True)
    language_code: str = _f("en-US", pattern=r"^[a-z]{2,3}(-[A-Z]{2})?$")
    system_instruction: str = _f(
        "You are a helpful voice assistant on a kitchen shelf. Answer briefly, in one or "
        "two spoken sentences."
    )
    input_transcription: bool = _f(True)
    output_transcription: bool = _f(True)
    # BCP-47 hints for the input transcript (empty: the service detects the language).
    transcription_language_codes: tuple[str, ...] = _f((), language_codes=True)
    # Per-family settings (edge_agent/live/profiles.py); None: absent, the model's default.
    proactive_audio: bool | None = _f(None)
    affective_dialog: bool | None = _f(None)
    thinking_level: str = _f("", choices=("", *THINKING_LEVELS))
    thinking_budget: int | None = _f(None, min=-1, max=32_768)
    server_vad: bool = _f(False)
    server_vad_start_sensitivity: str = _f("low", choices=("low", "high"))
    server_vad_end_sensitivity: str = _f("low", choices=("low", "high"))
    server_vad_prefix_padding_ms: int = _f(100, min=0, max=2000)
    server_vad_silence_ms: int = _f(700, min=100, max=5000)
    context_window_compression: bool = _f(True)
    compression_trigger_tokens: int = _f(100_000, min=1_000, max=128_000)
    compression_target_tokens: int = _f(60_000, min=500, max=128_000)
    session_resumption: bool = _f(True)
    tools: tuple[str, ...] = _f(("get_time",), choices=BUILTIN_TOOLS)
    base_url: str = _f("", pattern=r"^(https://\S+)?$")
    ca_file: str = _f("", path="file")
    api_version: str = _f("v1beta", choices=("v1alpha", "v1beta", "v1"))
    api_key_file: str = _f("/etc/edge-agent/api_key")
    setup_timeout_s: float = _f(10.0, min=1.0, max=120.0)
    # Floors: see SERVICE_MIN_PING_TIMEOUT_S.
    keepalive_ping_interval_s: float = _f(30.0, min=5.0, max=300.0)
    keepalive_ping_timeout_s: float = _f(60.0, min=5.0, max=600.0)


@dataclass(frozen=True)
class AudioConfig:
    input_device: str = _f("default", nonempty=True)
    output_device: str = _f("default", nonempty=True)
    capture_rate_hz: int = _f(16_000, choices=(16_000, 44_100, 48_000))
    playback_rate_hz: int = _f(24_000, choices=(16_000, 22_050, 24_000, 44_100, 48_000))
    duplex_rate_hz: int = _f(48_000, choices=(16_000, 24_000, 44_100, 48_000))
    block_ms: int = _f(10, choices=(10, 20, 30))
    capture_queue_blocks: int = _f(500, min=10, max=10_000)
    volume_percent: int = _f(80, min=0, max=100)
    cue_volume_percent: int = _f(40, min=0, max=100)
    reopen_max_delay_s: float = _f(10.0, min=0.5, max=300.0)


@dataclass(frozen=True)
class WakeWordConfig:
    models: tuple[str, ...] = _f(("hey_jarvis",), wake_models=True)
    threshold: float = _f(0.5, min=0.05, max=0.99)
    thresholds: dict[str, float] = field(default_factory=dict, metadata={"min": 0.05, "max": 0.99})
    refractory_s: float = _f(2.0, min=0.0, max=30.0)


@dataclass(frozen=True)
class VadConfig:
    aggressiveness: int = _f(2, min=0, max=3)
    frame_ms: int = _f(30, choices=(10, 20, 30))
    pre_roll_ms: int = _f(300, min=0, max=2000)
    speech_start_ms: int = _f(90, min=10, max=1000)
    speech_end_ms: int = _f(800, min=100, max=5000)
    max_utterance_s: float = _f(30.0, min=1.0, max=300.0)


@dataclass(frozen=True)
class EchoConfig:
    enabled: bool = _f(True)
    voice_barge_in: bool = _f(True)
    barge_in_speech_ms: int = _f(300, min=100, max=2000)
    # Whether voice barge-in is on is decided with the other barge-in rules, in one
    # place: edge_agent.core.policy.BargeInRules.from_config (it needs `enabled`).


@dataclass(frozen=True)
class PlaybackConfig:
    prefill_ms: int = _f(120, min=0, max=2000)
    max_buffer_ms: int = _f(120_000, min=1_000, max=600_000)
    fade_ms: int = _f(5, min=0, max=50)


@dataclass(frozen=True)
class ConversationConfig:
    follow_up_s: float = _f(6.0, min=0.0, max=60.0)
    idle_close_s: float = _f(20.0, min=1.0, max=600.0)
    cues: bool = _f(True)
    barge_in_by_wake_word: bool = _f(True)


@dataclass(frozen=True)
class GpioConfig:
    enabled: bool = _f(True)
    button_pin: str = _f("GPIO17", pin=True)
    button_pull_up: bool = _f(True)
    button_bounce_ms: int = _f(50, min=0, max=1000)
    hold_s: float = _f(1.5, min=0.3, max=10.0)
    status_led_pin: str = _f("GPIO18", pin=True)
    listen_led_pin: str = _f("GPIO23", pin=True)
    mute_led_pin: str = _f("GPIO24", pin=True)
    led_active_high: bool = _f(True)


@dataclass(frozen=True)
class ReconnectConfig:
    initial_delay_s: float = _f(0.5, min=0.05, max=60.0)
    max_delay_s: float = _f(30.0, min=0.5, max=3600.0)
    multiplier: float = _f(2.0, min=1.0, max=10.0)
    jitter: float = _f(1.0, min=0.0, max=1.0)
    stable_after_s: float = _f(60.0, min=1.0, max=3600.0)
    fatal_retry_delay_s: float = _f(300.0, min=10.0, max=86_400.0)
    replay_buffer_max_s: float = _f(60.0, min=1.0, max=600.0)


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: str = _f("/var/lib/edge-agent", nonempty=True)
    watchdog_stall_s: float = _f(5.0, min=1.0, max=120.0)


@dataclass(frozen=True)
class TimersConfig:
    max_ring_s: float = _f(900.0, min=10.0, max=3600.0)
    cue_period_s: float = _f(2.0, min=0.5, max=30.0)
    max_duration_s: float = _f(86_400.0, min=60.0, max=604_800.0)
    max_timers: int = _f(20, min=1, max=100)


@dataclass(frozen=True)
class HistoryConfig:
    enabled: bool = _f(False)
    # "" = history.jsonl in daemon.state_dir.
    path: str = _f("")
    max_file_bytes: int = _f(1_000_000, min=10_000, max=100_000_000)
    keep_files: int = _f(5, min=1, max=100)


@dataclass(frozen=True)
class McpServerConfig:
    name: str = _f("", pattern=MCP_SERVER_NAME_PATTERN, max_len=20)
    url: str = _f("", pattern=r"^(https?://\S+)?$")
    command: tuple[str, ...] = _f((), program=True)
    token_credential: str = _f("", pattern=r"^([A-Za-z0-9_.@\-]+)?$")
    token_file: str = _f("")
    connect_timeout_s: float = _f(5.0, min=0.5, max=60.0)
    call_timeout_s: float = _f(8.0, min=0.5, max=120.0)
    max_result_chars: int = _f(32_000, min=1_000, max=1_000_000)


@dataclass(frozen=True)
class CommandToolConfig:
    name: str = _f("", pattern=FUNCTION_NAME_PATTERN)
    description: str = _f("")
    argv: tuple[str, ...] = _f((), program=True)
    # JSON schema of the arguments (an object schema), e.g. { type = "object", properties =
    # { room = { type = "string" } } }; {} = no arguments.
    parameters: dict[str, Any] = field(default_factory=dict, metadata={"json_schema": True})
    timeout_s: float = _f(10.0, min=0.5, max=300.0)
    max_output_bytes: int = _f(16_384, min=256, max=1_000_000)


@dataclass(frozen=True)
class ToolsConfig:
    mcp: tuple[McpServerConfig, ...] = ()
    command: tuple[CommandToolConfig, ...] = ()


@dataclass(frozen=True)
class LoggingConfig:
    level: str = _f("INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    target: str = _f("auto", choices=("auto", "journal", "stderr"))


@dataclass(frozen=True)
class Config:
    gemini: GeminiConfig = field(default_factory=GeminiConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    wake_word: WakeWordConfig = field(default_factory=WakeWordConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    echo: EchoConfig = field(default_factory=EchoConfig)
    playback: PlaybackConfig = field(default_factory=PlaybackConfig)
    conversation: ConversationConfig = field(default_factory=ConversationConfig)
    gpio: GpioConfig = field(default_factory=GpioConfig)
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    timers: TimersConfig = field(default_factory=TimersConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    source: str = field(default="<defaults>", compare=False)


class ConfigError(Exception):
    """All problems found in one config file, each as ``file:key: reason``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


# Raspberry Pi 40-pin header: physical pin -> BCM number, so BOARD11 and GPIO17 collide.
# fmt: off
_BOARD_TO_BCM = {
    3: 2, 5: 3, 7: 4, 8: 14, 10: 15, 11: 17, 12: 18, 13: 27, 15: 22, 16: 23, 18: 24,
    19: 10, 21: 9, 22: 25, 23: 11, 24: 8, 26: 7, 27: 0, 28: 1, 29: 5, 31: 6, 32: 12,
    33: 13, 35: 19, 36: 16, 37: 26, 38: 20, 40: 21,
}
# fmt: on
_PIN_RE = re.compile(r"^(?:(GPIO|BCM)(\d{1,2})|(BOARD|J8:)(\d{1,2})|(\d{1,2}))$", re.IGNORECASE)


def is_gemini_service(base_url: str) -> bool:
    """Does ``gemini.base_url`` reach the Gemini service itself (empty: the SDK's default)?"""
    host = urllib.parse.urlsplit(base_url).hostname or ""
    return (
        not base_url
        or host == GEMINI_SERVICE_HOST_SUFFIX
        or host.endswith("." + GEMINI_SERVICE_HOST_SUFFIX)
    )


def bcm_number(pin: str) -> int | None:
    """The BCM number of a gpiozero pin name, or None when it is not a valid Pi pin."""
    m = _PIN_RE.match(pin.strip())
    if not m:
        return None
    if m.group(2) is not None or m.group(5) is not None:
        n = int(m.group(2) or m.group(5))
        return n if 0 <= n <= 27 else None
    return _BOARD_TO_BCM.get(int(m.group(4)))


def builtin_wake_model_dir() -> Path | None:
    """Where the pyopen-wakeword wheel keeps the pretrained .tflite models."""
    import importlib.util

    spec = importlib.util.find_spec("pyopen_wakeword")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _table_list_type(t: Any) -> type | None:
    """The item class of a ``tuple[SomeConfig, ...]`` field (an array of tables)."""
    if get_origin(t) is tuple:
        item = get_args(t)[0]
        if dataclasses.is_dataclass(item):
            return item  # type: ignore[return-value]
    return None


def _optional_inner(t: Any) -> Any:
    """``X | None`` -> X (TOML has no null: an absent key is the None)."""
    if get_origin(t) is types.UnionType:
        return next(a for a in get_args(t) if a is not type(None))
    return t


def _type_name(t: Any) -> str:
    t = _optional_inner(t)
    origin = get_origin(t)
    if origin in (list, tuple):
        items = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}
        return f"a list of {items.get(get_args(t)[0], 'values')}"
    if origin is dict:
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[t]


def _shown(value: Any) -> str:
    """A value as a problem line quotes it (see ``edge_agent.quoting``)."""
    return short_repr(value, 80)


def _expand_user(path: Path) -> Path:
    """``~`` and ``~user`` expanded; left as written when the user does not exist (Path
    raises RuntimeError then), so the problem is "file not found", not a traceback."""
    try:
        return path.expanduser()
    except RuntimeError:
        return path


def _coerce(value: Any, t: Any) -> tuple[bool, Any]:
    """Check a TOML value against a field type; ints are accepted where floats are."""
    t = _optional_inner(t)
    if t is Any:
        return True, value
    origin = get_origin(t)
    if origin is tuple:
        item_t = get_args(t)[0]
        if not isinstance(value, list):
            return False, None
        items = [_coerce(v, item_t) for v in value]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if origin is dict:
        _, val_t = get_args(t)
        if not isinstance(value, dict):
            return False, None
        items = {k: _coerce(v, val_t) for k, v in value.items()}
        return all(ok for ok, _ in items.values()), {k: v for k, (_, v) in items.items()}
    if t is bool:
        return isinstance(value, bool), value
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if t is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        try:
            return ok, float(value) if ok else None
        except OverflowError:  # an integer too large for a float
            return False, None
    return isinstance(value, str), value


class _Checker:
    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.problems: list[str] = []

    def problem(self, key: str, reason: str) -> None:
        self.problems.append(f"{self.source}:{key}: {reason}")

    def unknown(self, key: str, name: str, known: list[str]) -> None:
        hint = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        suffix = f" (did you mean '{hint[0]}'?)" if hint else ""
        self.problem(key, f"unknown key{suffix}")

    def section(self, cls: type, raw: Any, prefix: str) -> Any:
        if not isinstance(raw, dict):
            self.problem(prefix, "must be a table ([" + prefix + "])")
            return cls()
        hints = get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for name, value in raw.items():
            key = f"{prefix}.{name}"
            if name not in fields:
                if name in SECRET_KEYS:
                    where = (
                        "the file named by gemini.api_key_file, GEMINI_API_KEY, or the "
                        "gemini_api_key systemd credential"
                        if prefix == "gemini"
                        else "a file (token_file) or a systemd credential (token_credential)"
                    )
                    self.problem(key, f"secrets are never read from config.toml: put it in {where}")
                else:
                    self.unknown(key, name, list(fields))
                continue
            table_t = _table_list_type(hints[name])
            if table_t is not None:
                values[name] = self.table_list(table_t, value, key)
                continue
            ok, coerced = _coerce(value, hints[name])
            if not ok:
                self.problem(key, f"must be {_type_name(hints[name])} (got {_shown(value)})")
                continue
            if self.rules(key, coerced, fields[name].metadata):
                values[name] = coerced
        return cls(**values)

    def table_list(self, cls: type, raw: Any, key: str) -> tuple[Any, ...]:
        """An array of tables ([[tools.mcp]]): each item checked like a section."""
        if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
            self.problem(key, f"must be a list of tables ([[{key}]])")
            return ()
        return tuple(self.section(cls, item, f"{key}[{i}]") for i, item in enumerate(raw))

    def rules(self, key: str, value: Any, meta: Any) -> bool:
        """Apply a field's rules; True when the value is acceptable."""
        before = len(self.problems)
        items = list(value) if isinstance(value, tuple) else [value]
        if isinstance(value, dict):
            items = list(value.values())
        if any(isinstance(item, str) and "\x00" in item for item in items):
            self.problem(key, "must not contain a NUL character (\\u0000)")
            return False  # and no path may be looked up with one
        for item in items:
            if isinstance(item, float) and math.isnan(item):
                self.problem(key, "must be a number (got nan)")
                continue
            if "min" in meta and item < meta["min"]:
                self.problem(key, f"must be at least {meta['min']} (got {_shown(item)})")
            if "max" in meta and item > meta["max"]:
                self.problem(key, f"must be at most {meta['max']} (got {_shown(item)})")
            if "choices" in meta and item not in meta["choices"]:
                choices = ", ".join(str(c) for c in meta["choices"])
                self.problem(key, f"must be one of {choices} (got {_shown(item)})")
        if "max_len" in meta and len(value) > meta["max_len"]:
            self.problem(key, f"must be at most {meta['max_len']} characters long")
        if meta.get("program") and value:
            self.program(key, value[0])
        if meta.get("json_schema") and value:
            self.json_schema(key, value)
        if meta.get("nonempty") and not value.strip():
            self.problem(key, "must not be empty")
        if "pattern" in meta and not re.match(meta["pattern"], value):
            self.problem(key, f"is not valid (got {_shown(value)})")
        if meta.get("path") == "file" and value:
            path = self.resolve(value)
            if not path.is_file():
                self.problem(key, f"file not found: {path}")
        if meta.get("pin") and value and bcm_number(value) is None:
            self.problem(
                key,
                f"not a Raspberry Pi GPIO pin (got {_shown(value)}; "
                "use e.g. 'GPIO17' or 'BOARD11')",
            )
        if meta.get("wake_models"):
            self.wake_models(key, value)
        if meta.get("model_names"):
            for name in value:
                if not re.match(MODEL_NAME_PATTERN, name):
                    self.problem(key, f"not a model name (got {_shown(name)})")
        if meta.get("language_codes"):
            for code in value:
                if not re.match(r"^[a-z]{2,3}(-[A-Z]{2})?$", code):
                    self.problem(key, f"not a BCP-47 language code (got {_shown(code)})")
        return len(self.problems) == before

    def program(self, key: str, program: str) -> None:
        """argv[0] of a tool: an absolute path to an existing file (no shell, no PATH)."""
        if not program.startswith("/"):
            self.problem(key, f"the program must be an absolute path (got {_shown(program)})")
        elif not Path(program).is_file():
            self.problem(key, f"program not found: {program}")

    def json_schema(self, key: str, schema: dict[str, Any]) -> None:
        if schema.get("type") != "object":
            self.problem(key, 'must be an object schema (type = "object")')
        props = schema.get("properties", {})
        if not isinstance(props, dict) or not all(isinstance(p, dict) for p in props.values()):
            self.problem(key, "properties must be a table of schemas")

    def resolve(self, value: str) -> Path:
        path = _expand_user(Path(value))
        return path if path.is_absolute() else self.base_dir / path

    def wake_models(self, key: str, models: tuple[str, ...]) -> None:
        if not models:
            self.problem(key, "needs at least one wake word model")
        for name in models:
            if name.endswith((".tflite", ".onnx")) or "/" in name:
                path = self.resolve(name)
                if not path.is_file():
                    self.problem(key, f"wake word model file not found: {path}")
            elif name not in BUILTIN_WAKE_MODELS:
                hint = difflib.get_close_matches(name, BUILTIN_WAKE_MODELS, n=1)
                suffix = f" (did you mean '{hint[0]}'?)" if hint else ""
                builtins = ", ".join(BUILTIN_WAKE_MODELS)
                self.problem(
                    key, f"unknown wake word model {_shown(name)}{suffix}; built-in: {builtins}"
                )
            else:
                model_dir = builtin_wake_model_dir()
                if model_dir is None or not (model_dir / f"{name}.tflite").is_file():
                    reason = f"built-in model {name!r} missing: pyopen-wakeword not installed"
                    self.problem(key, reason)

    def cross_checks(self, cfg: Config) -> None:
        g = cfg.gemini
        if g.compression_target_tokens >= g.compression_trigger_tokens:
            self.problem(
                "gemini.compression_target_tokens",
                f"must be below gemini.compression_trigger_tokens ({g.compression_trigger_tokens})",
            )
        if g.keepalive_ping_timeout_s < g.keepalive_ping_interval_s:
            self.problem(
                "gemini.keepalive_ping_timeout_s",
                "must be at least gemini.keepalive_ping_interval_s (the service's pongs are slow)",
            )
        elif (
            is_gemini_service(g.base_url)
            and g.keepalive_ping_timeout_s < SERVICE_MIN_PING_TIMEOUT_S
        ):
            self.problem(
                "gemini.keepalive_ping_timeout_s",
                f"must be at least {SERVICE_MIN_PING_TIMEOUT_S:g} s against the Gemini service, "
                f"which answers pings in up to 30 s (got {g.keepalive_ping_timeout_s:g}); "
                "shorter is for a local gateway or emulator set in gemini.base_url",
            )
        self.model_settings(g)
        r = cfg.reconnect
        if r.max_delay_s < r.initial_delay_s:
            self.problem("reconnect.max_delay_s", "must be at least reconnect.initial_delay_s")
        for name in cfg.wake_word.thresholds:
            if name not in cfg.wake_word.models:
                self.problem(f"wake_word.thresholds.{name}", "not one of wake_word.models")
        if cfg.gpio.enabled:
            self.pin_conflicts(cfg.gpio)
        self.tool_servers(cfg.tools)

    def tool_servers(self, tools: ToolsConfig) -> None:
        """Each MCP server reached one way, tokens only for URLs, no two tools one name."""
        seen: set[str] = set()
        for i, server in enumerate(tools.mcp):
            key = f"tools.mcp[{i}]"
            if not server.name:
                self.problem(f"{key}.name", "every MCP server needs a name (its tools' prefix)")
            elif server.name in seen:
                self.problem(f"{key}.name", f"{server.name!r} is used by another MCP server")
            seen.add(server.name)
            if bool(server.url) == bool(server.command):
                self.problem(key, "give either url (streamable HTTP) or command (stdio)")
            if server.command and (server.token_file or server.token_credential):
                self.problem(key, "a token is only sent to a url server")
            if server.token_file and server.token_credential:
                self.problem(key, "give token_file or token_credential, not both")
            if server.token_file and not server.token_file.startswith("/"):
                # Not checked for existence: like the API key file, it may be readable by
                # root only and reach the service as a credential instead.
                self.problem(f"{key}.token_file", "must be an absolute path")
        names: set[str] = set(BUILTIN_TOOLS)
        for i, tool in enumerate(tools.command):
            key = f"tools.command[{i}]"
            if not tool.name:
                self.problem(f"{key}.name", "every command tool needs a name")
            elif tool.name in names:
                self.problem(f"{key}.name", f"{tool.name!r} is already a tool name")
            names.add(tool.name)
            if not tool.argv:
                example = '["/usr/local/bin/garage", "status"]'
                self.problem(f"{key}.argv", f"needs the program and its arguments, e.g. {example}")
            if not tool.description:
                self.problem(f"{key}.description", "tell the model what the tool does")

    def model_settings(self, g: GeminiConfig) -> None:
        """Settings the configured model's family does not take (see live/profiles.py)."""
        profile, _ = choose_profile(g.model)
        model = g.model.removeprefix("models/")
        unsupported = f"not supported by {model}"
        if g.affective_dialog is not None and profile.affective_dialog is Support.NONE:
            self.problem("gemini.affective_dialog", f"{unsupported} (remove the key)")
        if g.proactive_audio is not None:
            if profile.proactive_audio is Support.NONE:
                self.problem("gemini.proactive_audio", f"{unsupported} (remove the key)")
            elif profile.proactive_audio is Support.ALWAYS and not g.proactive_audio:
                self.problem(
                    "gemini.proactive_audio",
                    f"false {unsupported} (proactive audio is always on; remove the key)",
                )
        if g.thinking_level and profile.thinking is not ThinkingForm.LEVEL:
            hint = (
                "use gemini.thinking_budget"
                if profile.thinking is ThinkingForm.BUDGET
                else "it takes no thinking setting"
            )
            self.problem("gemini.thinking_level", f"{unsupported} ({hint})")
        elif g.thinking_level and g.thinking_level not in profile.thinking_levels:
            levels = ", ".join(profile.thinking_levels)
            self.problem("gemini.thinking_level", f"{model} takes one of {levels}")
        if g.thinking_budget is not None and profile.thinking is not ThinkingForm.BUDGET:
            hint = (
                "use gemini.thinking_level"
                if profile.thinking is ThinkingForm.LEVEL
                else "it takes no thinking setting"
            )
            self.problem("gemini.thinking_budget", f"{unsupported} ({hint})")
        seen = {model}
        for name in g.fallback_models:
            bare = name.removeprefix("models/")
            if bare in seen:
                self.problem(
                    "gemini.fallback_models", f"{bare!r} is listed twice (or is gemini.model)"
                )
            seen.add(bare)

    def pin_conflicts(self, gpio: GpioConfig) -> None:
        seen: dict[int, str] = {}
        for name in ("button_pin", "status_led_pin", "listen_led_pin", "mute_led_pin"):
            pin = getattr(gpio, name)
            bcm = bcm_number(pin) if pin else None
            if bcm is None:
                continue
            if bcm in seen:
                self.problem(
                    f"gpio.{name}", f"pin {pin!r} (BCM {bcm}) is already used by gpio.{seen[bcm]}"
                )
            else:
                seen[bcm] = name


_SECTIONS = {f.name: f for f in dataclasses.fields(Config) if f.name != "source"}


def parse_config(text: str, source: str = "config.toml", base_dir: Path | None = None) -> Config:
    """Validate TOML text; raise ConfigError listing every problem."""
    checker = _Checker(source, base_dir or Path.cwd())
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        if message.endswith("(at end of document)"):  # say which line that is
            message = f"{message[:-1]}, line {len(text.splitlines()) or 1})"
        raise ConfigError([f"{source}: invalid TOML: {message}"]) from None
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise ConfigError([f"{source}: invalid TOML: arrays or tables nested too deeply"]) from None
    except ValueError:  # an integer of more digits than Python converts (4300)
        raise ConfigError([f"{source}: invalid TOML: an integer of thousands of digits"]) from None
    sections: dict[str, Any] = {}
    hints = get_type_hints(Config)
    for name, value in raw.items():
        if name not in _SECTIONS:
            checker.unknown(name, name, list(_SECTIONS))
            continue
        sections[name] = checker.section(hints[name], value, name)
    cfg = Config(**sections, source=source)
    checker.cross_checks(cfg)
    if checker.problems:
        raise ConfigError(checker.problems)
    return cfg


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; a missing, unreadable, oversized or non-UTF-8 file
    is a ConfigError too."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a directory, not a config file"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path}: larger than {MAX_CONFIG_BYTES} bytes: not a config file"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError([f"{path}: not UTF-8 text (line {line}): {exc.reason}"]) from None
    return parse_config(text, source=str(path), base_dir=path.parent.resolve())


def resolve_path(cfg: Config, value: str) -> Path:
    """A path from the config, relative paths taken from the config file's folder."""
    path = _expand_user(Path(value))
    if path.is_absolute() or cfg.source.startswith("<"):
        return path
    return Path(cfg.source).resolve().parent / path

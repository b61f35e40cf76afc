"""Config loading with real files: the shipped file is valid, broken ones say what is wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import get_type_hints

import pytest

from edge_agent.config import (
    Config,
    ConfigError,
    _table_list_type,
    bcm_number,
    load_config,
    parse_config,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "config.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value.problems


def test_shipped_config_is_valid_and_matches_defaults() -> None:
    cfg = load_config(SHIPPED)
    # Every default in the code is written out in the shipped file, and vice versa.
    assert cfg == Config()


def test_shipped_config_documents_every_key() -> None:
    import dataclasses
    import tomllib

    text = SHIPPED.read_text()
    raw = tomllib.loads(text)
    for section in dataclasses.fields(Config):
        if section.name == "source":
            continue
        fields = dataclasses.fields(section.default_factory())  # type: ignore[misc]
        # A key whose default is "absent" (None) cannot be written in TOML: it is shown
        # commented out instead, with an example value. So is a list of tables
        # ([[tools.mcp]]), empty by default, shown as a commented example.
        absent = {f.name for f in fields if f.default is None}
        hints = get_type_hints(type(section.default_factory()))  # type: ignore[misc]
        tables = {f.name for f in fields if _table_list_type(hints[f.name]) is not None}
        keys = {f.name for f in fields} - absent - tables
        assert set(raw[section.name]) == keys, section.name
        for name in absent:
            assert f"\n# {name} = " in text, f"{section.name}.{name} is not documented"
        for name in tables:
            assert f"\n# [[{section.name}.{name}]]\n" in text, f"{section.name}.{name}"


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == Config()


BROKEN = [
    ("[vad]\naggressiveness = 5\n", "vad.aggressiveness: must be at most 3 (got 5)"),
    ("[vad]\nframe_ms = 25\n", "vad.frame_ms: must be one of 10, 20, 30 (got 25)"),
    ('[vad]\npre_roll_ms = "300"\n', "vad.pre_roll_ms: must be an integer (got '300')"),
    ("[gemini]\ninput_transcription = 1\n", "gemini.input_transcription: must be true or false"),
    ('[gemini]\nmodle = "x"\n', "gemini.modle: unknown key (did you mean 'model'?)"),
    ("[vadd]\naggressiveness = 1\n", "vadd: unknown key (did you mean 'vad'?)"),
    ('[gemini]\nca_file = "missing-ca.pem"\n', "gemini.ca_file: file not found:"),
    (
        '[wake_word]\nmodels = ["hey_jarvs"]\n',
        "wake_word.models: unknown wake word model 'hey_jarvs' (did you mean 'hey_jarvis'?)",
    ),
    (
        '[wake_word]\nmodels = ["models/mine.tflite"]\n',
        "wake_word.models: wake word model file not found:",
    ),
    ("[wake_word]\nmodels = []\n", "wake_word.models: needs at least one wake word model"),
    ('[gpio]\nbutton_pin = "GPIO99"\n', "gpio.button_pin: not a Raspberry Pi GPIO pin"),
    (
        '[gpio]\nbutton_pin = "BOARD11"\nmute_led_pin = "GPIO17"\n',
        "gpio.mute_led_pin: pin 'GPIO17' (BCM 17) is already used by gpio.button_pin",
    ),
    ("[reconnect]\njitter = 1.5\n", "reconnect.jitter: must be at most 1.0 (got 1.5)"),
    (
        "[reconnect]\ninitial_delay_s = 10.0\nmax_delay_s = 5.0\n",
        "reconnect.max_delay_s: must be at least reconnect.initial_delay_s",
    ),
    (
        "[gemini]\ncompression_trigger_tokens = 5000\ncompression_target_tokens = 6000\n",
        "gemini.compression_target_tokens: must be below gemini.compression_trigger_tokens",
    ),
    ('[gemini]\nbase_url = "http://insecure"\n', "gemini.base_url: is not valid"),
    ('[logging]\nlevel = "LOUD"\n', "logging.level: must be one of DEBUG, INFO, WARNING, ERROR"),
    ("gemini = 3\n", "gemini: must be a table"),
    (
        "[wake_word]\nthresholds = { alexa = 0.5 }\n",
        "wake_word.thresholds.alexa: not one of wake_word.models",
    ),
    ("[wake_word]\nthresholds = { hey_jarvis = 2.0 }\n", "wake_word.thresholds: must be at most"),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN, ids=[e.split(":")[0] for _, e in BROKEN])
def test_broken_config_names_file_key_and_reason(tmp_path: Path, text: str, expected: str) -> None:
    found = problems(tmp_path, text)
    path = tmp_path / "config.toml"
    assert any(p.startswith(f"{path}:{expected}") for p in found), found


def test_malformed_toml_names_the_line(tmp_path: Path) -> None:
    found = problems(tmp_path, '[gemini]\nvoice = "Puck"\nmodel = \n')
    assert len(found) == 1
    assert found[0].startswith(f"{tmp_path / 'config.toml'}: invalid TOML")
    assert "line 3" in found[0]


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    text = "[vad]\naggressiveness = 9\nframe_ms = 7\n[gpio]\nhold_s = -1\n[bogus]\n"
    found = problems(tmp_path, text)
    keys = {p.split(":")[1] for p in found}
    assert keys == {"vad.aggressiveness", "vad.frame_ms", "gpio.hold_s", "bogus"}


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert info.value.problems == [f"{tmp_path / 'nope.toml'}: file not found"]


def test_relative_model_path_is_taken_from_config_folder(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mine.tflite").write_bytes(b"\0" * 16)
    cfg = load_config(write(tmp_path, '[wake_word]\nmodels = ["models/mine.tflite"]\n'))
    assert cfg.wake_word.models == ("models/mine.tflite",)


def test_ints_accepted_for_floats() -> None:
    assert parse_config("[reconnect]\nmax_delay_s = 60\n").reconnect.max_delay_s == 60.0


def test_disabled_gpio_skips_pin_conflicts() -> None:
    cfg = parse_config('[gpio]\nenabled = false\nbutton_pin = "GPIO18"\n')
    assert cfg.gpio.button_pin == "GPIO18"


@pytest.mark.parametrize(
    ("pin", "bcm"),
    [
        ("GPIO17", 17),
        ("BCM4", 4),
        ("BOARD11", 17),
        ("J8:12", 18),
        ("22", 22),
        ("GPIO28", None),
        ("BOARD1", None),
        ("LED", None),
    ],
)
def test_pin_names(pin: str, bcm: int | None) -> None:
    assert bcm_number(pin) == bcm


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True, timeout=60
    )


def test_check_config_cli_ok() -> None:
    result = run_cli("check-config", str(SHIPPED))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_check_config_cli_reports_each_problem(tmp_path: Path) -> None:
    path = write(tmp_path, '[vad]\naggressiveness = 9\n[gpio]\nbutton_pin = "X1"\n')
    result = run_cli("check-config", str(path))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert f"{path}:vad.aggressiveness: must be at most 3 (got 9)" in lines
    pin_error = f"{path}:gpio.button_pin: not a Raspberry Pi GPIO pin"
    assert any(line.startswith(pin_error) for line in lines)


def test_check_config_cli_malformed_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[gemini\n")
    result = run_cli("check-config", str(path))
    assert result.returncode == 1
    assert "invalid TOML" in result.stderr and "line 1" in result.stderr


def test_version_cli() -> None:
    result = run_cli("version")
    assert result.returncode == 0
    assert result.stdout.startswith("edge-agent ")


@pytest.mark.parametrize("aec", [True, False])
@pytest.mark.parametrize("voice", [True, False])
@pytest.mark.parametrize("wake_word", [True, False])
def test_barge_in_rules_are_decided_from_config_once(
    aec: bool, voice: bool, wake_word: bool
) -> None:
    """Voice barge-in needs echo cancellation (without it the mic hears the reply); the
    wake word follows its own switch; the button always counts."""
    import dataclasses

    from edge_agent.core.policy import BargeInRules

    base = Config()
    cfg = dataclasses.replace(
        base,
        echo=dataclasses.replace(base.echo, enabled=aec, voice_barge_in=voice),
        conversation=dataclasses.replace(base.conversation, barge_in_by_wake_word=wake_word),
    )
    rules = BargeInRules.from_config(cfg)
    assert rules.voice is (aec and voice)
    assert rules.wake_word is wake_word
    assert rules.button
    assert BargeInRules.from_config(Config()) == BargeInRules(wake_word=True, voice=True)


# ---- per-model settings (edge_agent/live/profiles.py) ----


def test_model_settings_rejected_per_family_all_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[gemini]\naffective_dialog = true\nproactive_audio = false\n"
        'thinking_level = "low"\nthinking_budget = 100\n[vad]\naggressiveness = 9\n',
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = info.value.problems
    assert f"{path}:gemini.affective_dialog: not supported by gemini-3.8-live (remove the key)" in (
        lines
    )
    assert any(
        line.startswith(f"{path}:gemini.proactive_audio: false not supported by gemini-3.8-live")
        for line in lines
    )
    assert any(line.startswith(f"{path}:gemini.thinking_level: not supported by") for line in lines)
    assert any(
        line.startswith(f"{path}:gemini.thinking_budget: not supported by") for line in lines
    )
    assert f"{path}:vad.aggressiveness: must be at most 3 (got 9)" in lines
    assert len(lines) == 5


@pytest.mark.parametrize(
    ("model", "text", "expected"),
    [
        ("gemini-3.1-flash-live-preview", "proactive_audio = false", "gemini.proactive_audio: not"),
        (
            "gemini-3.1-flash-live-preview",
            "affective_dialog = false",
            "gemini.affective_dialog: not",
        ),
        ("gemini-3.1-flash-live-preview", "thinking_budget = 0", "gemini.thinking_budget: not"),
        ("gemini-2.5-flash-native-audio-latest", 'thinking_level = "low"', "gemini.thinking_level"),
        ("gemini-3.8-live", 'fallback_models = ["gemini-3.8-live"]', "gemini.fallback_models"),
        ("gemini-3.8-live", 'fallback_models = ["Not A Model"]', "gemini.fallback_models: not a"),
        ("gemini-3.8-live", 'transcription_language_codes = ["english"]', "not a BCP-47"),
        ("gemini 3.8", "", "gemini.model: is not valid"),
    ],
)
def test_model_settings_rejected(tmp_path: Path, model: str, text: str, expected: str) -> None:
    found = problems(tmp_path, f'[gemini]\nmodel = "{model}"\n{text}\n')
    assert any(expected in line for line in found), found


@pytest.mark.parametrize(
    "text",
    [
        'model = "gemini-3.8-live"\nproactive_audio = true',
        'model = "gemini-3.8-live-extended-thinking"\nthinking_level = "high"',
        'model = "gemini-3.1-flash-live-preview"\nthinking_level = "minimal"',
        'model = "gemini-2.5-flash-native-audio-latest"\nthinking_budget = -1\n'
        "proactive_audio = true\naffective_dialog = true",
        'model = "models/gemini-3.8-live"\nfallback_models = ["gemini-3.1-flash-live-preview"]',
        'model = "gemini-9-live-unknown"',  # unknown: newest family's rules, not an error
    ],
)
def test_model_settings_accepted(text: str) -> None:
    parse_config(f"[gemini]\n{text}\n")


def test_check_config_cli_names_the_model(tmp_path: Path) -> None:
    path = write(tmp_path, "[gemini]\naffective_dialog = true\n")
    result = run_cli("check-config", str(path))
    assert result.returncode == 1
    assert f"{path}:gemini.affective_dialog: not supported by gemini-3.8-live" in result.stderr


# --------------------------------------------------------------------------- abilities


def test_abilities_sections_parse(tmp_path: Path) -> None:
    text = f"""
[timers]
max_ring_s = 600
[history]
enabled = true
keep_files = 3
[[tools.mcp]]
name = "home"
url = "http://homeassistant.local:8123/api/mcp"
token_credential = "ha_token"
call_timeout_s = 4
[[tools.mcp]]
name = "notes"
command = ["{sys.executable}", "-m", "notes"]
[[tools.command]]
name = "garage_door"
description = "Open or close the garage door."
argv = ["{sys.executable}", "garage.py"]
parameters = {{ type = "object", properties = {{ action = {{ type = "string" }} }} }}
"""
    cfg = load_config(write(tmp_path, text))
    assert cfg.timers.max_ring_s == 600.0 and cfg.history.enabled and cfg.history.keep_files == 3
    home, notes = cfg.tools.mcp
    assert home.url.endswith("/api/mcp") and home.token_credential == "ha_token"
    assert home.call_timeout_s == 4.0 and notes.command[1:] == ("-m", "notes")
    assert cfg.tools.command[0].parameters["properties"]["action"] == {"type": "string"}


def test_the_home_assistant_example_in_config_toml_parses_when_uncommented() -> None:
    text = SHIPPED.read_text()
    start = text.index("# [[tools.mcp]]\n")
    block = []
    for line in text[start:].splitlines():
        if line.strip() == "#":
            break
        block.append(line.removeprefix("# ").split("  #")[0])
    cfg = parse_config("\n".join(block))
    (server,) = cfg.tools.mcp
    assert server.url == "http://homeassistant.local:8123/api/mcp"
    assert server.token_credential == "ha_token"


ABILITIES_BROKEN = [
    ("[timers]\nmax_ring_s = 5\n", "timers.max_ring_s: must be at least 10.0 (got 5.0)"),
    ("[history]\nkeep_files = 0\n", "history.keep_files: must be at least 1 (got 0)"),
    (
        '[[tools.mcp]]\nname = "home"\nurl = "http://h/api/mcp"\ntoken = "abc"\n',
        "tools.mcp[0].token: secrets are never read from config.toml",
    ),
    ('[[tools.mcp]]\nname = "home"\n', "tools.mcp[0]: give either url (streamable HTTP)"),
    (
        '[[tools.mcp]]\nname = "home"\nurl = "http://h"\ncommand = ["/bin/cat"]\n',
        "tools.mcp[0]: give either url",
    ),
    ('[[tools.mcp]]\nname = "Home Assistant"\nurl = "http://h"\n', "tools.mcp[0].name: is not"),
    ('[[tools.mcp]]\nname = "a__b"\nurl = "http://h"\n', "tools.mcp[0].name: is not valid"),
    ('[[tools.mcp]]\nurl = "http://h"\n', "tools.mcp[0].name: every MCP server needs a name"),
    ('[[tools.mcp]]\nname = "h"\nurl = "ftp://h"\n', "tools.mcp[0].url: is not valid"),
    (
        '[[tools.mcp]]\nname = "h"\nurl = "http://a"\n[[tools.mcp]]\nname = "h"\nurl = "http://b"\n',
        "tools.mcp[1].name: 'h' is used by another MCP server",
    ),
    (
        '[[tools.mcp]]\nname = "h"\ncommand = ["/bin/cat"]\ntoken_file = "/etc/t"\n',
        "tools.mcp[0]: a token is only sent to a url server",
    ),
    (
        '[[tools.mcp]]\nname = "h"\nurl = "http://a"\ntoken_file = "t"\n',
        "tools.mcp[0].token_file: must be an absolute path",
    ),
    (
        '[[tools.mcp]]\nname = "h"\ncommand = ["npx", "server"]\n',
        "tools.mcp[0].command: the program must be an absolute path (got 'npx')",
    ),
    ("[tools]\nmcp = 3\n", "tools.mcp: must be a list of tables ([[tools.mcp]])"),
    (
        '[[tools.command]]\nname = "x"\ndescription = "d"\nargv = ["/no/such/program"]\n',
        "tools.command[0].argv: program not found: /no/such/program",
    ),
    (
        '[[tools.command]]\nname = "get_time"\ndescription = "d"\nargv = ["/bin/cat"]\n',
        "tools.command[0].name: 'get_time' is already a tool name",
    ),
    ('[[tools.command]]\nname = "x"\nargv = ["/bin/cat"]\n', "tools.command[0].description"),
    ('[[tools.command]]\nname = "x"\ndescription = "d"\n', "tools.command[0].argv: needs"),
    (
        '[[tools.command]]\nname = "x"\ndescription = "d"\nargv = ["/bin/cat"]\n'
        'parameters = { type = "string" }\n',
        "tools.command[0].parameters: must be an object schema",
    ),
    (
        '[[tools.command]]\nname = "1x"\ndescription = "d"\nargv = ["/bin/cat"]\n',
        "tools.command[0].name: is not valid",
    ),
    ('[gemini]\ntools = ["set_timers"]\n', "gemini.tools: must be one of"),
]


@pytest.mark.parametrize(
    ("text", "expected"), ABILITIES_BROKEN, ids=[e.split(":")[0] for _, e in ABILITIES_BROKEN]
)
def test_broken_abilities_config_names_file_key_and_reason(
    tmp_path: Path, text: str, expected: str
) -> None:
    found = problems(tmp_path, text)
    path = tmp_path / "config.toml"
    assert any(p.startswith(f"{path}:{expected}") for p in found), found


def test_abilities_problems_are_reported_at_once(tmp_path: Path) -> None:
    text = (
        "[timers]\nmax_timers = 0\n"
        '[[tools.mcp]]\nname = "home"\ntoken = "secret-value"\n'
        '[[tools.command]]\nname = "x"\n'
    )
    found = problems(tmp_path, text)
    keys = {p.split(":")[1] for p in found}
    assert {"timers.max_timers", "tools.mcp[0].token", "tools.mcp[0]"} <= keys
    assert {"tools.command[0].argv", "tools.command[0].description"} <= keys
    assert not any("secret-value" in p for p in found)  # the secret is not echoed back


def test_builtin_tool_names_are_accepted() -> None:
    names = (
        "get_time",
        "set_timer",
        "list_timers",
        "cancel_timer",
        "get_volume",
        "set_volume",
        "end_conversation",
        "device_status",
    )
    cfg = parse_config("[gemini]\ntools = [" + ", ".join(f'"{n}"' for n in names) + "]\n")
    assert cfg.gemini.tools == names


# ---- keepalive floors (issue 17) ------------------------------------------------------------

EMULATOR_URL = 'base_url = "https://127.0.0.1:8443"\n'


@pytest.mark.shelf
@pytest.mark.parametrize(
    ("gemini", "interval_s", "timeout_s"),
    [
        # A gateway or emulator that answers pings at once: down to 5 s (the field floor).
        (EMULATOR_URL + "keepalive_ping_interval_s = 5.0\nkeepalive_ping_timeout_s = 5.0\n", 5, 5),
        # The Gemini service (base_url empty or *.googleapis.com): the timeout >= 30 s.
        ("keepalive_ping_interval_s = 30.0\nkeepalive_ping_timeout_s = 30.0\n", 30, 30),
        (
            'base_url = "https://generativelanguage.googleapis.com"\n'
            "keepalive_ping_interval_s = 5.0\nkeepalive_ping_timeout_s = 30.0\n",
            5,
            30,
        ),
    ],
)
def test_keepalive_values_at_their_floor_are_accepted(
    gemini: str, interval_s: float, timeout_s: float
) -> None:
    g = parse_config("[gemini]\n" + gemini).gemini
    assert (g.keepalive_ping_interval_s, g.keepalive_ping_timeout_s) == (interval_s, timeout_s)


@pytest.mark.shelf
@pytest.mark.parametrize(
    ("gemini", "message"),
    [
        (
            EMULATOR_URL + "keepalive_ping_interval_s = 4.9\n",
            "gemini.keepalive_ping_interval_s: must be at least 5.0 (got 4.9)",
        ),
        (
            EMULATOR_URL + "keepalive_ping_interval_s = 5.0\nkeepalive_ping_timeout_s = 4.9\n",
            "gemini.keepalive_ping_timeout_s: must be at least 5.0 (got 4.9)",
        ),
        (
            "keepalive_ping_interval_s = 5.0\nkeepalive_ping_timeout_s = 29.9\n",
            "gemini.keepalive_ping_timeout_s: must be at least 30 s against the Gemini service, "
            "which answers pings in up to 30 s (got 29.9)",
        ),
        (
            'base_url = "https://eu.generativelanguage.googleapis.com"\n'
            "keepalive_ping_interval_s = 10.0\nkeepalive_ping_timeout_s = 10.0\n",
            "gemini.keepalive_ping_timeout_s: must be at least 30 s against the Gemini service",
        ),
    ],
)
def test_keepalive_values_below_their_floor_are_refused(gemini: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[gemini]\n" + gemini)
    assert message in str(info.value)

"""Generated broken configs: every one is rejected with ``file:key: reason`` (``file: reason``
with the line for a syntax error), none crashes, and a reload keeps the running config.

Configs start from the shipped config.toml and get one to four things wrong: a wrong type,
a value out of range or not among the choices, NaN, an unknown key or section, a section
that is not a table; or the file itself is broken: bad TOML syntax, a duplicate key,
non-UTF-8 bytes, nesting past tomllib's recursion limit, a huge integer, a huge file, a
missing file, a directory. They go through ``load_config`` (what check-config and a reload
use), ``edge-agent check-config`` in-process (``cli.main``) and, for a sample, as a real
subprocess; and through ``Daemon.reload`` of a daemon built with a good config (its reload
needs no audio when the new config is refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import math
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, get_type_hints

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edge_agent import cli
from edge_agent.config import (
    MAX_CONFIG_BYTES,
    Config,
    ConfigError,
    _optional_inner,
    _table_list_type,
    load_config,
)
from edge_agent.device.systemd import SystemdNotifier

pytestmark = pytest.mark.shelf

REPO = Path(__file__).resolve().parents[1]
SHIPPED = tomllib.loads((REPO / "config.toml").read_text())
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# ---- TOML out of plain values -------------------------------------------------------------


def _quoted(text: str) -> str:
    """A TOML basic string: JSON's escapes, but astral characters as themselves (TOML has
    no surrogate pairs) and DEL escaped."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)  # inf, -inf and 1e+300 are TOML
    if isinstance(value, str):
        return _quoted(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{_quoted(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + ", ".join(items) + " }"
    raise TypeError(value)


def toml_document(doc: dict[str, Any]) -> str:
    """Top-level scalars first, then one [section] per table."""
    lines = [f"{_quoted(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for name, table in doc.items():
        if isinstance(table, dict):
            lines.append(f"\n[{_quoted(name)}]")
            lines.extend(f"{_quoted(k)} = {toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


# ---- what each field takes ----------------------------------------------------------------

SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "source"}
SECTION_TYPES = get_type_hints(Config)


def fields_of(section: str) -> dict[str, tuple[Any, dict[str, Any]]]:
    cls = SECTION_TYPES[section]
    hints = get_type_hints(cls)
    return {f.name: (hints[f.name], dict(f.metadata)) for f in dataclasses.fields(cls)}


ALL_FIELDS = [(s, name) for s in SECTIONS for name in fields_of(s)]
RANGED = [
    (s, name)
    for s, name in ALL_FIELDS
    if {"min", "max", "choices"} & set(fields_of(s)[name][1])
    and _table_list_type(fields_of(s)[name][0]) is None
]
ints = st.integers(-(2**70), 2**70)
texts = st.text(max_size=20)


def wrong_type_values(t: Any) -> st.SearchStrategy[Any]:
    """Values ``config._coerce`` must refuse for a field of type ``t``."""
    t = _optional_inner(t)
    if _table_list_type(t) is not None:
        return st.one_of(ints, texts, st.lists(ints, min_size=1, max_size=2))
    origin = getattr(t, "__origin__", None)
    if origin is tuple:
        return st.one_of(
            ints, texts, st.booleans(), st.lists(st.dictionaries(texts, ints), min_size=1)
        )
    if origin is dict:
        return st.one_of(ints, texts, st.lists(ints, max_size=2))
    if t is bool:
        return st.one_of(ints, texts, st.floats(allow_nan=False))
    if t is int:
        return st.one_of(
            texts, st.booleans(), st.floats(allow_nan=False), st.lists(ints, max_size=2)
        )
    if t is float:
        return st.one_of(texts, st.booleans(), st.lists(ints, max_size=2), st.just(10**400))
    return st.one_of(ints, st.booleans(), st.floats(allow_nan=False), st.dictionaries(texts, ints))


def out_of_range_values(t: Any, meta: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of the right type that the field's rules must refuse."""
    item_t = _optional_inner(t)
    origin = getattr(item_t, "__origin__", None)
    if origin in (tuple, dict):
        item_t = item_t.__args__[-1]
    options: list[st.SearchStrategy[Any]] = []
    if "min" in meta:
        low = meta["min"]
        below = (
            st.integers(-(2**62), math.floor(low) - 1)
            if item_t is int
            else st.floats(max_value=low, exclude_max=True, allow_nan=False)
        )
        options.append(below)
    if "max" in meta:
        high = meta["max"]
        above = (
            st.integers(math.ceil(high) + 1, 2**62)
            if item_t is int
            else st.floats(min_value=high, exclude_min=True, allow_nan=False)
        )
        options.append(above)
    if item_t is float:
        options.append(st.just(math.nan))
    if "choices" in meta:
        base = ints if item_t is int else texts
        options.append(base.filter(lambda v: v not in meta["choices"]))
    strategy = st.one_of(options)
    if origin is tuple:
        return strategy.map(lambda v: [v])
    if origin is dict:
        return strategy.map(lambda v: {"hey_jarvis": v})
    return strategy


@dataclasses.dataclass
class Broken:
    doc: dict[str, Any]
    keys: list[str]  # each must be named by a problem line


@st.composite
def broken_docs(draw: st.DrawFn) -> Broken:
    doc = json.loads(json.dumps(SHIPPED))  # a deep copy of plain data
    keys: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["type", "type", "range", "range", "key", "section", "table"]))
        if kind == "type":
            section, name = draw(st.sampled_from(ALL_FIELDS))
            t, _meta = fields_of(section)[name]
            if not isinstance(doc.setdefault(section, {}), dict):
                continue  # replaced by a scalar already
            doc[section][name] = draw(wrong_type_values(t))
            keys.append(f"{section}.{name}")
        elif kind == "range":
            section, name = draw(st.sampled_from(RANGED))
            t, meta = fields_of(section)[name]
            if not isinstance(doc.setdefault(section, {}), dict):
                continue
            doc[section][name] = draw(out_of_range_values(t, meta))
            keys.append(f"{section}.{name}")
        elif kind == "key":
            section = draw(st.sampled_from([s for s in SECTIONS if isinstance(doc.get(s), dict)]))
            known = set(fields_of(section))
            name = draw(st.from_regex(r"[a-z_]{1,12}", fullmatch=True))
            assume(name not in known)
            doc[section][name] = draw(st.one_of(ints, texts, st.booleans()))
            keys.append(f"{section}.{name}")
        elif kind == "section":
            name = draw(
                st.from_regex(r"[a-z_]{1,12}", fullmatch=True).filter(lambda n: n not in SECTIONS)
            )
            doc[name] = draw(st.one_of(st.dictionaries(texts, ints, max_size=2), ints))
            keys.append(name)
        else:
            section = draw(st.sampled_from(list(SECTIONS)))
            doc[section] = draw(st.one_of(ints, texts, st.booleans()))
            keys.append(section)
    # a key broken twice (a wrong type, then the section replaced) is named by its section
    keys = [k for k in keys if isinstance(doc.get(k.split(".")[0]), dict) or "." not in k]
    return Broken(doc, keys)


PROBLEM = re.compile(r"^(?P<file>[^:]+):(?P<key>[^ :][^:]*(?:\[\d+\][^:]*)*)?: (?P<reason>\S.*)$")


def assert_well_formed(problems: list[str], path: Path) -> None:
    assert problems, "a broken config must be rejected with at least one problem"
    for line in problems:
        assert line.startswith(f"{path}:"), line
        assert "Traceback" not in line and "\n" not in line, line
        rest = line[len(f"{path}:") :]
        assert rest.startswith(" ") or re.match(r"^[^ ].*?: \S", rest, re.S), line


def check_config_cli(path: Path) -> tuple[int, str, str]:
    """``edge-agent check-config PATH`` in-process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["check-config", str(path)])
    return code, out.getvalue(), err.getvalue()


@SETTINGS
@given(broken_docs())
def test_generated_broken_configs_are_rejected_key_by_key(tmp_path: Path, broken: Broken) -> None:
    path = tmp_path / "config.toml"
    path.write_text(toml_document(broken.doc))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = caught.value.problems
    assert_well_formed(problems, path)
    for key in broken.keys:
        assert any(p.startswith(f"{path}:{key}: ") for p in problems), (key, problems)
    code, out, err = check_config_cli(path)
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert lines[:-1] == problems and lines[-1] == f"{path}: {len(problems)} problem(s)"


@st.composite
def broken_files(draw: st.DrawFn) -> bytes:
    """A config.toml broken as a file: syntax, encoding, nesting, size."""
    text = toml_document(SHIPPED)
    lines = text.splitlines(keepends=True)
    kind = draw(
        st.sampled_from(
            ["duplicate", "truncate", "garbage", "unterminated", "non_utf8", "deep",
             "huge_int", "bad_header", "nul", "oversized"]
        )
    )  # fmt: skip
    if kind == "duplicate":
        i = draw(st.sampled_from([i for i, line in enumerate(lines) if " = " in line]))
        return "".join([*lines[: i + 1], lines[i], *lines[i + 1 :]]).encode()
    if kind == "truncate":
        return text.encode()[: draw(st.integers(1, len(text) - 1))]
    if kind == "garbage":
        at = draw(st.integers(0, len(text)))
        return (text[:at] + draw(st.text(min_size=1, max_size=5)) + text[at:]).encode()
    if kind == "unterminated":
        return (text + 'extra = "no end\n').encode()
    if kind == "non_utf8":
        at = draw(st.integers(0, len(text)))
        raw = text.encode()
        return raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"])) + raw[at:]
    if kind == "deep":
        depth = draw(st.sampled_from([2_000, 50_000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ("{a=", "}")]))
        return f"x = {opener * depth}1{closer * depth}\n{text}".encode()
    if kind == "huge_int":
        return text.replace("volume_percent = 80", "volume_percent = " + "9" * 5000).encode()
    if kind == "bad_header":
        return ("[gemini\n" + text).encode()
    if kind == "nul":
        return text.replace('voice = "Puck"', 'voice = "Pu\\u0000ck"').encode()
    return text.encode() + b"# padding\n" * (MAX_CONFIG_BYTES // 10 + 1)


@SETTINGS
@given(broken_files())
def test_broken_files_are_rejected_with_a_line_and_never_crash(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(raw)
    try:
        load_config(path)
    except ConfigError as exc:
        problems = exc.problems
    else:
        return  # garbage that happens to be valid TOML for a valid config (in a string)
    assert_well_formed(problems, path)
    file_level = [p for p in problems if p.startswith(f"{path}: ")]
    for line in file_level:
        if "invalid TOML" in line and "nested too deeply" not in line and "thousands" not in line:
            assert re.search(r"line \d+", line), line
        if "not UTF-8" in line:
            assert re.search(r"line \d+", line), line
    code, _out, err = check_config_cli(path)
    assert code == 1 and "Traceback" not in err


def test_missing_file_and_directory_are_one_line_each(tmp_path: Path) -> None:
    for path, reason in ((tmp_path / "nope.toml", "file not found"), (tmp_path, "is a directory")):
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert caught.value.problems == [f"{path}: {caught.value.problems[0].split(': ', 1)[1]}"]
        assert reason in caught.value.problems[0]
        code, _out, err = check_config_cli(path)
        assert code == 1 and err.splitlines()[0] == caught.value.problems[0]


def _samples(n: int) -> list[bytes]:
    """n broken files, the same each run (hypothesis' own draws, derandomized)."""
    found: list[bytes] = []

    @settings(max_examples=n, deadline=None, derandomize=True, database=None)
    @given(st.one_of(broken_docs().map(lambda b: toml_document(b.doc).encode()), broken_files()))
    def collect(raw: bytes) -> None:
        if len(found) < n:
            found.append(raw)

    collect()
    return found


def test_check_config_as_a_real_subprocess_prints_problems_not_tracebacks(tmp_path: Path) -> None:
    paths = []
    for i, raw in enumerate(_samples(16)):
        path = tmp_path / f"config{i}.toml"
        path.write_bytes(raw)
        paths.append(path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "devkit")]))

    def run(path: Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "edge_agent", "check-config", str(path)]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, paths))
    for path, result in zip(paths, results, strict=True):
        assert "Traceback" not in result.stderr, result.stderr[-2000:]
        if result.returncode == 0:
            continue  # the rare garbage that is valid
        assert result.returncode == 1, result.stderr
        lines = result.stderr.splitlines()
        assert lines[-1].startswith(f"{path}: ") and lines[-1].endswith("problem(s)")
        assert all(line.startswith(f"{path}:") for line in lines)


# ---- a reload with a broken config keeps the running one ------------------------------------


class Notices:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def __call__(self, message: str) -> bool:
        self.sent.append(message)
        return True


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from edge_agent.app.daemon import Daemon

    tmp = tmp_path_factory.mktemp("reload")
    path = tmp / "config.toml"
    good_doc = json.loads(json.dumps(SHIPPED))
    good_doc["daemon"]["state_dir"] = str(tmp / "state")
    path.write_text(toml_document(good_doc))
    good = load_config(path)
    notices = Notices()
    notifier = SystemdNotifier({"NOTIFY_SOCKET": "@fuzz"}, send=notices)
    daemon = Daemon(good, path, notifier=notifier, environ={})
    daemon.notices = notices  # type: ignore[attr-defined]
    yield daemon
    daemon.runtime.close()


@SETTINGS
@given(st.one_of(broken_docs().map(lambda b: toml_document(b.doc).encode()), broken_files()))
def test_a_reload_with_a_broken_config_keeps_the_running_one(daemon: Any, raw: bytes) -> None:
    before = daemon.cfg
    daemon.config_path.write_bytes(raw)
    try:
        load_config(daemon.config_path)
    except ConfigError:
        pass
    else:
        assume(False)  # garbage that happens to be valid (inside a string): not this test's case
    daemon.notices.sent.clear()
    assert asyncio.run(daemon.reload()) is False
    assert daemon.cfg is before, "the running config was replaced"
    error = daemon.runtime.last_error
    assert error.startswith(f"config reload failed: {daemon.config_path}:"), error
    sent = daemon.notices.sent
    assert sent[0].startswith("RELOADING=1\n") and sent[-1].startswith("READY=1\n"), sent
    assert "kept running config" in sent[-1]


def test_a_reload_that_fails_unexpectedly_keeps_the_running_one_and_leaves_reloading(
    daemon: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a ConfigError (a bug, an I/O error the loader did not expect): the same outcome,
    and systemd is told READY=1 again instead of staying in RELOADING."""
    import edge_agent.app.daemon as daemon_module

    def broken_loader(path: Any) -> Any:
        raise RuntimeError("the loader tripped over something")

    monkeypatch.setattr(daemon_module, "load_config", broken_loader)
    before = daemon.cfg
    daemon.notices.sent.clear()
    with caplog.at_level("ERROR", logger="edge_agent.app.daemon"):
        assert asyncio.run(daemon.reload()) is False
    assert daemon.cfg is before
    error = daemon.runtime.last_error
    assert error == (
        f"config reload failed: {daemon.config_path}: could not be read "
        "(RuntimeError('the loader tripped over something'))"
    ), error
    sent = daemon.notices.sent
    assert sent[0].startswith("RELOADING=1\n") and sent[-1].startswith("READY=1\n"), sent
    assert "kept running config" in sent[-1]
    assert "reload failed: kept the running configuration" in caplog.text

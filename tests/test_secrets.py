"""The API key: lookup order, and it never reaches a log line or an error message."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from edge_agent.config import ConfigError, parse_config
from edge_agent.logsetup import RedactingFormatter
from edge_agent.secrets import ApiKeyMissing, redact, register_secret, resolve_api_key

KEY = "AIzaSyTEST-not-a-real-key-0123456789abcd"


def test_environment_wins(tmp_path: Path) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_text("from-file-key\n")
    key = resolve_api_key(str(keyfile), {"GEMINI_API_KEY": "from-env-key"})
    assert key.value == "from-env-key"
    assert key.source == "environment variable GEMINI_API_KEY"


def test_key_file_then_credential(tmp_path: Path) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_text("  from-file-key \n")
    assert resolve_api_key(str(keyfile), {}).value == "from-file-key"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "gemini_api_key").write_text("from-credential")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    key = resolve_api_key(str(tmp_path / "absent"), env)
    assert (key.value, key.source) == ("from-credential", "systemd credential gemini_api_key")


def test_missing_key_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(ApiKeyMissing) as info:
        resolve_api_key(str(tmp_path / "absent"), {})
    assert "GEMINI_API_KEY" in str(info.value)
    assert str(tmp_path / "absent") in str(info.value)


def test_repr_hides_value() -> None:
    key = resolve_api_key("", {"GEMINI_API_KEY": KEY})
    assert KEY not in repr(key) and KEY not in str(key) and KEY not in f"{key}"


def test_redact_registered_and_key_like_values() -> None:
    register_secret("sekrit-value-42")
    assert "sekrit-value-42" not in redact("error: bad sekrit-value-42 here")
    url = "wss://host/ws/x?key=abc123def&alt=1"
    assert redact(url) == "wss://host/ws/x?key=[REDACTED]&alt=1"
    assert "x-goog-api-key': '[REDACTED]" in redact("{'x-goog-api-key': 'zzz999'}")
    assert KEY not in redact(f"got {KEY}")


def test_config_error_never_echoes_key(tmp_path: Path) -> None:
    register_secret(KEY)
    # Someone pastes the key into config.toml by mistake: the error names the key, not the value.
    with pytest.raises(ConfigError) as info:
        parse_config(f'[gemini]\napi_key = "{KEY}"\n')
    assert KEY not in str(info.value)
    # ... and says where a key does belong.
    assert "gemini.api_key: secrets are never read from config.toml" in str(info.value)
    assert "gemini.api_key_file" in str(info.value)


def test_debug_logging_and_tracebacks_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    register_secret(KEY)
    logger = logging.getLogger("edge_agent.test_secrets")
    formatter = RedactingFormatter("%(levelname)s %(message)s")
    with caplog.at_level(logging.DEBUG, logger="edge_agent.test_secrets"):
        logger.debug("connecting with key %s", KEY)
        try:
            raise ConnectionError(f"401 for wss://x/ws?key={KEY}")
        except ConnectionError:
            logger.exception("connection failed")
    assert len(caplog.records) == 2
    for record in caplog.records:
        text = formatter.format(record)
        assert KEY not in text
        assert "[REDACTED]" in text


def test_logging_subprocess_redacts_stderr(tmp_path: Path) -> None:
    """The real handler set up by setup_logging redacts what reaches stderr."""
    import subprocess
    import sys

    code = (
        "import logging\n"
        "from edge_agent.logsetup import setup_logging\n"
        "from edge_agent.secrets import resolve_api_key\n"
        "setup_logging('DEBUG', 'stderr')\n"
        "key = resolve_api_key('', None)\n"
        "logging.getLogger('x').debug('key is %s', key.value)\n"
        "logging.getLogger('x').error('url wss://h/ws?key=' + key.value)\n"
    )
    env = {**os.environ, "GEMINI_API_KEY": KEY}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("[REDACTED]") == 2
    assert KEY not in result.stderr


def test_unreadable_key_file_falls_through_to_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service user cannot read the root-only key file; the credential still works."""
    locked = tmp_path / "api_key"
    locked.write_text("root-only")
    real_read_text = Path.read_text

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        if self == locked:  # what a non-root service user gets for a 0600 root file
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", read_text)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "gemini_api_key").write_text("from-credential")
    key = resolve_api_key(str(locked), {"CREDENTIALS_DIRECTORY": str(creds)})
    assert (key.value, key.source) == ("from-credential", "systemd credential gemini_api_key")

"""The API key: where it comes from, and keeping it out of every log line and message.

The key is looked up in a documented order (environment, key file, systemd credential)
and registered for redaction the moment it is read, so no later code path (an SDK error
that echoes the URL, a traceback, a DEBUG line) can print it.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
CREDENTIAL_NAME = "gemini_api_key"
REDACTED = "[REDACTED]"

# Key-looking query parameters and headers are masked even if never registered.
_KEY_PATTERNS = (
    re.compile(r"(?i)([?&]key=)[^&\s'\"]+"),
    re.compile(r"(?i)(x-goog-api-key['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+"),
    re.compile(r"\bAIza[0-9A-Za-z_\-]{20,}"),
)

_lock = threading.Lock()
_secrets: set[str] = set()


class ApiKeyMissing(Exception):
    """No API key was found in any of the documented places."""


@dataclass(frozen=True)
class ApiKey:
    value: str = ""
    source: str = ""

    def __repr__(self) -> str:  # never show the value, even in a debugger dump
        return f"ApiKey(source={self.source!r})"

    __str__ = __repr__


def register_secret(value: str) -> None:
    """Remember a secret so that redact() masks it wherever it appears."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """Mask every registered secret and anything that looks like an API key."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern in _KEY_PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


def _read_key_file(path: Path) -> str | None:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        # Under systemd the service user cannot read the root-only key file: that is
        # expected, the same key then arrives as a credential.
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ApiKeyMissing(f"cannot read API key file {path}: {exc.__class__.__name__}") from None
    return value or None


def resolve_api_key(api_key_file: str, environ: Mapping[str, str] | None = None) -> ApiKey:
    """Find the key: environment, then the key file, then the systemd credential."""
    env = os.environ if environ is None else environ
    for name in ENV_VARS:
        value = env.get(name, "").strip()
        if value:
            register_secret(value)
            return ApiKey(value, f"environment variable {name}")
    if api_key_file:
        value = _read_key_file(Path(api_key_file))
        if value:
            register_secret(value)
            return ApiKey(value, f"key file {api_key_file}")
    cred_dir = env.get("CREDENTIALS_DIRECTORY", "")
    if cred_dir:
        path = Path(cred_dir) / CREDENTIAL_NAME
        value = _read_key_file(path)
        if value:
            register_secret(value)
            return ApiKey(value, f"systemd credential {CREDENTIAL_NAME}")
    raise ApiKeyMissing(
        "no Gemini API key: set GEMINI_API_KEY, put it in "
        f"{api_key_file or 'the file named by gemini.api_key_file'}, or pass the systemd "
        f"credential {CREDENTIAL_NAME}"
    )

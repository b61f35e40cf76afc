"""The API key: where it comes from, and keeping it out of every log line and message.

The key is looked up in a documented order (environment, key file, systemd credential)
and registered for redaction the moment it is read, so no later code path (an SDK error
that echoes the URL, a traceback, a DEBUG line) can print it.
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading
import urllib.parse
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


_MIN_SECRET_CHARS = 4
_MIN_PIECE_CHARS = 8  # a word of a malformed key: long enough not to mask ordinary words
# A key is one token of printable ASCII: anything else would be sent as a broken (or
# injected) HTTP header, and the libraries' errors quote such a header in full.
_KEY_SHAPE = re.compile(r"[\x21-\x7e]+")


def _spellings(value: str) -> set[str]:
    """The forms a secret takes in text: as is, escaped by repr() or JSON (an exception's
    repr, a JSON status), percent-encoded in a URL, and each line or word of it alone."""
    forms = {value, repr(value)[1:-1], json.dumps(value)[1:-1], urllib.parse.quote(value, "")}
    forms.add(urllib.parse.quote_plus(value))
    forms.update(piece for piece in value.split() if len(piece) >= _MIN_PIECE_CHARS)
    return {form for form in forms if len(form) >= _MIN_SECRET_CHARS}


def register_secret(value: str) -> None:
    """Remember a secret so that redact() masks it wherever and however it appears."""
    if value and len(value) >= _MIN_SECRET_CHARS:
        with _lock:
            _secrets.update(_spellings(value))


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


def _checked(value: str, source: str) -> ApiKey:
    """Registered for redaction first, then refused if it cannot be a key (two lines in
    the file, a space or a control character): the error names the source, never the
    value."""
    register_secret(value)
    if not _KEY_SHAPE.fullmatch(value):
        raise ApiKeyMissing(
            f"the API key in {source} is not a single line of printable ASCII (a second "
            "line, a space or a control character?): put the key alone on one line"
        )
    return ApiKey(value, source)


def resolve_api_key(api_key_file: str, environ: Mapping[str, str] | None = None) -> ApiKey:
    """Find the key: environment, then the key file, then the systemd credential."""
    env = os.environ if environ is None else environ
    for name in ENV_VARS:
        value = env.get(name, "").strip()
        if value:
            return _checked(value, f"environment variable {name}")
    if api_key_file:
        value = _read_key_file(Path(api_key_file))
        if value:
            return _checked(value, f"key file {api_key_file}")
    cred_dir = env.get("CREDENTIALS_DIRECTORY", "")
    if cred_dir:
        path = Path(cred_dir) / CREDENTIAL_NAME
        value = _read_key_file(path)
        if value:
            return _checked(value, f"systemd credential {CREDENTIAL_NAME}")
    raise ApiKeyMissing(
        "no Gemini API key: set GEMINI_API_KEY, put it in "
        f"{api_key_file or 'the file named by gemini.api_key_file'}, or pass the systemd "
        f"credential {CREDENTIAL_NAME}"
    )


def permission_warnings(config_path: str | Path, api_key_file: str) -> list[str]:
    """Files others can read or change that they should not, each with its fix.

    The key file must be readable by its owner (and its group) only. config.toml holds
    no secret (one there is refused), so it may be world-readable, as `edge-agent status`
    run by a user needs; but it says where the key is sent (gemini.base_url) and which
    programs run (tools.command), so no one but its owner may write it.
    """
    warnings = []
    checks = (
        (api_key_file, 0o026, "open to other users (world-readable, or others may write)",
         "chmod 600"),
        (str(config_path), 0o022, "writable by users other than its owner", "chmod go-w"),
    )  # fmt: skip
    for name, bad_bits, what, fix in checks:
        if not name:
            continue
        try:
            mode = os.stat(name).st_mode
        except OSError:  # absent or not ours to look at: other checks say so
            continue
        if stat.S_ISREG(mode) and mode & bad_bits:
            warnings.append(f"{name} is {what}, mode {stat.S_IMODE(mode):04o}: run {fix} {name}")
    return warnings

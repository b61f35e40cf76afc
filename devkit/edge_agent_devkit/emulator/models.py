"""The models the emulated service serves, each family's setup rules, and the models list.

The real service picks its rules from the model named in the setup, refuses a retired or
unknown model right after setup, and lists its models over REST (``GET /v1beta/models``,
paged). This module is that part of the service, pure (no I/O): the connection asks
``setup_verdict`` and the HTTP front asks ``list_page`` / ``get_model``.

It is written from the service's side on purpose, apart from the client's profile table
(edge_agent/live/profiles.py): a test that passes because both sides share one mistaken
row would prove nothing. Where the real reason text is unknown, the service's generic
"Request contains an invalid argument." (seen in public reports of 1007 refusals) is used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

CLOSE_INVALID_ARGUMENT = 1007
CLOSE_POLICY = 1008
REASON_INVALID_ARGUMENT = "Request contains an invalid argument."
LIVE_METHOD = "bidiGenerateContent"


class Family(StrEnum):
    LIVE_3_8 = "3.8"
    LIVE_3_8_EXTENDED = "3.8-extended-thinking"
    LIVE_3_1 = "3.1"
    NATIVE_AUDIO_2_5 = "2.5"


_FAMILY_PATTERNS: tuple[tuple[Family, str], ...] = (
    (Family.LIVE_3_8_EXTENDED, r"gemini-3\.8-live-extended-thinking(-\d{2}-\d{4})?"),
    (Family.LIVE_3_8, r"gemini-3\.8-live(-\d{2}-\d{4})?"),
    (Family.LIVE_3_1, r"gemini-3\.1-flash-live(-preview)?(-\d{2}-\d{4})?"),
    (Family.NATIVE_AUDIO_2_5, r"gemini-2\.5-flash-native-audio-(preview-\d{2}-\d{4}|latest)"),
)


@dataclass(frozen=True)
class ServedModel:
    """One entry of the models list."""

    name: str  # bare, without "models/"
    display_name: str
    methods: tuple[str, ...]
    version: str = "001"
    input_token_limit: int = 131_072
    output_token_limit: int = 65_536

    def to_json(self) -> dict[str, Any]:
        """The REST form (camelCase; the SDK maps supportedGenerationMethods to
        Model.supported_actions)."""
        return {
            "name": f"models/{self.name}",
            "version": self.version,
            "displayName": self.display_name,
            "inputTokenLimit": self.input_token_limit,
            "outputTokenLimit": self.output_token_limit,
            "supportedGenerationMethods": list(self.methods),
        }


_LIVE = ("bidiGenerateContent",)
_TEXT = ("generateContent", "countTokens", "createCachedContent", "batchGenerateContent")
DEFAULT_MODELS: tuple[ServedModel, ...] = (
    ServedModel("gemini-2.5-flash", "Gemini 2.5 Flash", _TEXT),
    ServedModel(
        "gemini-2.5-flash-native-audio-latest", "Gemini 2.5 Flash Native Audio Latest", _LIVE
    ),
    ServedModel(
        "gemini-2.5-flash-native-audio-preview-12-2025",
        "Gemini 2.5 Flash Native Audio Preview 12-2025",
        _LIVE,
    ),
    ServedModel("gemini-3.1-flash-live-preview", "Gemini 3.1 Flash Live Preview", _LIVE),
    ServedModel("gemini-3.8-flash", "Gemini 3.8 Flash", _TEXT),
    ServedModel("gemini-3.8-live", "Gemini 3.8 Live", _LIVE),
    ServedModel("gemini-3.8-live-extended-thinking", "Gemini 3.8 Live Extended Thinking", _LIVE),
    ServedModel("gemini-embedding-001", "Gemini Embedding 001", ("embedContent",)),
)


def bare_name(model: str) -> str:
    return model.strip().removeprefix("models/")


def family_of(model: str) -> Family | None:
    name = bare_name(model)
    for family, pattern in _FAMILY_PATTERNS:
        if re.fullmatch(pattern, name):
            return family
    return None


def not_found_reason(model: str, api_version: str = "v1beta", method: str = LIVE_METHOD) -> str:
    """The service's words for a retired, unknown or non-Live model."""
    return (
        f"models/{bare_name(model)} is not found for API version {api_version}, or is not "
        f"supported for {method}. Call ListModels to see the list of available models and "
        "their supported methods."
    )


@dataclass(frozen=True)
class SetupVerdict:
    """What the service does with a setup: answer it, close, or never answer."""

    close: tuple[int, str] | None = None  # (code, reason)
    hang: bool = False  # no setupComplete, ever (3.1 with affective dialog or proactivity)

    @property
    def accepted(self) -> bool:
        return self.close is None and not self.hang


ACCEPT = SetupVerdict()
_INVALID = SetupVerdict(close=(CLOSE_INVALID_ARGUMENT, REASON_INVALID_ARGUMENT))


def setup_verdict(
    setup: Mapping[str, Any],
    served: Sequence[ServedModel],
    retired: frozenset[str],
    api_version: str = "v1beta",
) -> SetupVerdict:
    """The service's answer to a (normalised, camelCase) setup message."""
    name = bare_name(str(setup.get("model", "")))
    model = next((m for m in served if m.name == name), None)
    family = family_of(name)
    if name in retired or model is None or LIVE_METHOD not in model.methods or family is None:
        return SetupVerdict(close=(CLOSE_POLICY, not_found_reason(name, api_version)))
    generation = setup.get("generationConfig") or {}
    thinking = generation.get("thinkingConfig") or {}
    proactivity = setup.get("proactivity")
    affective = "enableAffectiveDialog" in generation
    if family in (Family.LIVE_3_8, Family.LIVE_3_8_EXTENDED):
        # Documented: proactive audio false, and any affective dialog field, are errors.
        if isinstance(proactivity, dict) and proactivity.get("proactiveAudio") is False:
            return _INVALID
        if affective:
            return _INVALID
        # Documented for 3.8 (thinking_level); the budget is inferred to be refused too.
        if family is Family.LIVE_3_8 and thinking:
            return _INVALID
        if family is Family.LIVE_3_8_EXTENDED and "thinkingBudget" in thinking:
            return _INVALID  # inferred: the variant takes a level
    elif family is Family.LIVE_3_1:
        if affective or proactivity is not None:
            return SetupVerdict(hang=True)  # reported: setupComplete never comes
        if "thinkingBudget" in thinking:
            return _INVALID  # inferred: 3.1 takes thinkingLevel instead
    elif family is Family.NATIVE_AUDIO_2_5 and "thinkingLevel" in thinking:
        return _INVALID  # inferred: 2.5 takes a thinking budget
    return ACCEPT


# ---- the models list (REST) ----

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def list_page(
    served: Sequence[ServedModel], retired: frozenset[str], page_size: int, page_token: str
) -> dict[str, Any]:
    """One page of ``GET /v1beta/models``; the token is the offset of the next page."""
    listed = [m for m in served if m.name not in retired]
    size = page_size if 0 < page_size <= MAX_PAGE_SIZE else DEFAULT_PAGE_SIZE
    start = int(page_token) if page_token.isdigit() else 0
    page: dict[str, Any] = {"models": [m.to_json() for m in listed[start : start + size]]}
    if start + size < len(listed):
        page["nextPageToken"] = str(start + size)
    return page


def get_model(
    served: Sequence[ServedModel], retired: frozenset[str], name: str
) -> dict[str, Any] | None:
    """``GET /v1beta/models/NAME``; None when it is not served (404)."""
    bare = bare_name(name)
    model = next((m for m in served if m.name == bare and bare not in retired), None)
    return None if model is None else model.to_json()


def error_body(code: int, message: str, status: str) -> dict[str, Any]:
    """The REST error envelope of Google APIs."""
    return {"error": {"code": code, "message": message, "status": status}}

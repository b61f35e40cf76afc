"""Which Live model to use when the service says the configured one is gone.

Live models are retired every few months; an appliance on a shelf must outlive its
model. The service refuses a retired or unknown model right after setup with close code
1008 and ``models/NAME is not found for API version v1beta, or is not supported for
bidiGenerateContent. Call ListModels ...``; the close frame cuts that reason at 123 bytes,
so either phrase is matched. Pure: no I/O; the adapter (``live.session``) does the models
list call and hands the result in as ``ListedModel`` rows.

The order tried after the model in use is refused as gone:
1. ``gemini.fallback_models``, in the owner's order (they chose them);
2. the service's models list: models that support ``bidiGenerateContent`` and belong to a
   family in ``live.profiles`` (a family we know how to set up), best first:
   - stable before preview: a stable model is retired on notice, a ``-preview`` / ``-exp``
     model or a moving ``-latest`` alias can go (or change) at any time;
   - then the newer family (the order of ``profiles.PROFILES``, newest first; a variant
     such as ``-extended-thinking`` comes after its plain model);
   - then, within a family, the family's own ``newest_model`` name, then dated names
     newest date first, then by name (for a stable order).
Every model refused as gone in this life is skipped. With nothing left, the session goes
to its fatal state and, at the fatal retry rate, starts the chain again from
``gemini.model`` (the service may have brought it back, or the owner may fix the config).
The replacement is kept until the process restarts or the config is reloaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from edge_agent.core.backoff import CLOSE_POLICY, Failure, FailureKind
from edge_agent.live.profiles import PROFILES, bare_model_name, known_profile

LIVE_METHOD = "bidiGenerateContent"
_GONE_PHRASES = ("is not found for api version", "not supported for bidigeneratecontent")
_UNSTABLE = re.compile(r"-(preview|exp|experimental|latest)(-|$)")
_DATE = re.compile(r"-(\d{2})-(\d{4})$")


def is_model_gone(failure: Failure) -> bool:
    """The service refused the model itself (retired, unknown, or not a Live model)."""
    if failure.kind is not FailureKind.CLOSED or failure.code != CLOSE_POLICY:
        return False
    reason = failure.reason.lower()
    return any(phrase in reason for phrase in _GONE_PHRASES)


@dataclass(frozen=True)
class ListedModel:
    """One row of the service's models list, as the adapter read it from the SDK."""

    name: str
    supported_actions: tuple[str, ...] = ()


class Source(StrEnum):
    CONFIGURED = "gemini.model"
    FALLBACK = "gemini.fallback_models"
    MODELS_LIST = "the service's models list"


@dataclass(frozen=True)
class Switch:
    """Use ``model`` from now on (it came from ``source``)."""

    model: str
    source: Source


@dataclass(frozen=True)
class AskList:
    """No configured fallback is left: the adapter must read the models list."""


@dataclass(frozen=True)
class NothingUsable:
    """Every candidate is gone: the session is fatal until the next retry or reload."""

    message: str


Step = Switch | AskList | NothingUsable


def is_stable(model: str) -> bool:
    return _UNSTABLE.search(bare_model_name(model)) is None


def rank_key(model: str) -> tuple[int, int, int, int, str]:
    """Sort key, best first (see the module docstring). Only for known families."""
    name = bare_model_name(model)
    profile = known_profile(name)
    family_rank = PROFILES.index(profile) if profile is not None else len(PROFILES)
    is_newest = profile is not None and name == profile.newest_model
    date = _DATE.search(name)
    newest_date = -(int(date.group(2)) * 12 + int(date.group(1))) if date else 0
    return (0 if is_stable(name) else 1, family_rank, 0 if is_newest else 1, newest_date, name)


def best_listed(listed: Iterable[ListedModel], skip: Iterable[str]) -> str | None:
    """The best Live model of a known family in ``listed`` that is not in ``skip``."""
    skipped = {bare_model_name(m) for m in skip}
    candidates = [
        bare_model_name(m.name)
        for m in listed
        if LIVE_METHOD in m.supported_actions
        and known_profile(m.name) is not None
        and bare_model_name(m.name) not in skipped
    ]
    return min(candidates, key=rank_key) if candidates else None


class ModelChooser:
    """The model the session uses, and what replaces it when the service says it is gone."""

    def __init__(self, configured: str, fallbacks: Sequence[str] = ()) -> None:
        self.configured = bare_model_name(configured)
        self.fallbacks = tuple(bare_model_name(m) for m in fallbacks)
        self.active = self.configured
        self.source = Source.CONFIGURED
        self.gone: list[str] = []  # refused as gone since the last restart of the chain

    @property
    def replaced(self) -> bool:
        return self.active != self.configured

    @property
    def note(self) -> str | None:
        """One line for STATUS: which model replaces which, and where it came from."""
        if not self.replaced:
            return None
        return (
            f"{self.configured} is gone (retired or unknown to the service); "
            f"using {self.active} from {self.source.value}"
        )

    def model_gone(self, model: str) -> Step:
        """``model`` was refused as gone: the next configured fallback, or ask the list."""
        bare = bare_model_name(model)
        if bare not in self.gone:
            self.gone.append(bare)
        for candidate in self.fallbacks:
            if candidate not in self.gone:
                return self._switch(candidate, Source.FALLBACK)
        return AskList()

    def models_listed(self, listed: Iterable[ListedModel] | None, error: str = "") -> Step:
        """The models list (None: the call failed with ``error``) -> the replacement."""
        if listed is not None:
            best = best_listed(listed, self.gone)
            if best is not None:
                return self._switch(best, Source.MODELS_LIST)
            why = "the service lists no other Live model of a known family"
        else:
            why = f"the models list could not be read ({error or 'unknown error'})"
        tried = ", ".join(self.gone)
        message = (
            f"no usable Live model: {tried} refused as not found or not supported for "
            f"{LIVE_METHOD}, and {why}. Set gemini.model (or gemini.fallback_models) to a "
            "current Live model and reload"
        )
        self.restart()
        return NothingUsable(message)

    def restart(self) -> None:
        """Start the chain again from ``gemini.model`` (after a fatal wait)."""
        self.active, self.source = self.configured, Source.CONFIGURED
        self.gone.clear()

    def _switch(self, model: str, source: Source) -> Switch:
        self.active, self.source = model, source
        return Switch(model, source)

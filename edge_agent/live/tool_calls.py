"""Tool calls in flight: which behaviour each call has and how its answer is scheduled.

Pure: no I/O, no asyncio; the adapter (``live.session``) runs each call in a task of its
own and asks this book what to send when the call finishes.

Behaviour (``types.Behavior``, from the model's profile in ``live.profiles``):
- NON_BLOCKING families (3.8): the conversation goes on while the tool runs; the answer
  carries a ``types.FunctionResponseScheduling``. A tool may ask for BLOCKING where the
  family lets a declaration choose (``blocking_per_tool``).
- BLOCKING families (2.5, 3.1): the model waits for the answer; no scheduling is sent
  (``scheduling`` is "only applicable to NON_BLOCKING function calls").

The scheduling rule (a tool may declare its own, or return one per call; otherwise):
- WHEN_IDLE for an answer with content: the user asked for it, so it is spoken, but only
  once the model is not talking (it never talks over the reply or the user);
- SILENT for an empty answer: a side effect with nothing to say (the model still learns
  the call is done, and can mention it if asked);
- INTERRUPT only when the tool declares it: something urgent enough to cut the reply
  (an alarm). The layer never picks INTERRUPT by itself.

Barge-in vs a late answer: when the user has barged in (our ``interrupt()`` or the
server's ``interrupted``) since the call was made, the answer no longer fits the
conversation: the user moved on. On a NON_BLOCKING call it is still sent, but SILENT:
the model gets the result into its context (so "what was it?" can be answered, and the
call is not left dangling for the model to retry), and nothing starts talking out of
nowhere. On a BLOCKING call it is dropped: a response would resume the reply the user
cut off (the service normally cancels such a call itself with toolCallCancellation).

A ``toolCallCancellation`` forgets the call: the adapter cancels its task and nothing is
sent for it, even if the tool finished in the same instant.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from google.genai import types

from edge_agent.live.profiles import ModelProfile, ToolCalls

logger = logging.getLogger(__name__)

Scheduling = types.FunctionResponseScheduling


@dataclass(frozen=True)
class ToolAnswer:
    """What a tool returned, and the scheduling it asks for (None: the rule picks)."""

    response: dict[str, Any]
    scheduling: Scheduling | None = None


def call_behavior(profile: ModelProfile, declared: ToolCalls | None) -> ToolCalls:
    """The behaviour a call of a tool that declared ``declared`` gets on ``profile``."""
    if declared is not None and profile.blocking_per_tool:
        return declared
    return profile.tool_calls


def declaration_behavior(
    profile: ModelProfile, declared: ToolCalls | None
) -> types.Behavior | None:
    """The ``behavior`` field of the declaration (None: leave it out, as BLOCKING
    families expect; they have no asynchronous calls to choose)."""
    if profile.tool_calls is ToolCalls.BLOCKING and not profile.blocking_per_tool:
        return None
    return types.Behavior(call_behavior(profile, declared).name)


def pick_scheduling(answer: ToolAnswer) -> Scheduling:
    """The rule of the module docstring, for an answer that arrived in time."""
    if answer.scheduling is not None and answer.scheduling is not Scheduling.SCHEDULING_UNSPECIFIED:
        return answer.scheduling
    return Scheduling.WHEN_IDLE if answer.response else Scheduling.SILENT


@dataclass
class _Call:
    name: str
    behavior: ToolCalls
    epoch: int  # barge-ins seen when the call was made


class ToolCallBook:
    """The calls of the current connection that still owe an answer."""

    def __init__(self) -> None:
        self.barge_ins = 0
        self._calls: dict[str, _Call] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def called(self, call_id: str, name: str, behavior: ToolCalls) -> None:
        self._calls[call_id] = _Call(name, behavior, self.barge_ins)

    def barged_in(self) -> None:
        """The user interrupted a reply (ours or the server's VAD)."""
        self.barge_ins += 1

    def cancelled(self, call_ids: tuple[str, ...]) -> None:
        for call_id in call_ids:
            self._calls.pop(call_id, None)

    def connection_ended(self) -> None:
        """Calls do not outlive their connection (the model asks again if it must)."""
        self._calls.clear()

    def response_for(self, call_id: str, answer: ToolAnswer) -> types.FunctionResponse | None:
        """The FunctionResponse to send for a finished call; None: send nothing."""
        call = self._calls.pop(call_id, None)
        if call is None:
            logger.info("tool call %s was cancelled or its connection ended; not answered", call_id)
            return None
        late = call.epoch != self.barge_ins
        if call.behavior is ToolCalls.BLOCKING:
            if late:
                logger.info("tool %s answered after a barge-in; dropped", call.name)
                return None
            return types.FunctionResponse(id=call_id, name=call.name, response=answer.response)
        scheduling = pick_scheduling(answer)
        if late and scheduling is not Scheduling.SILENT:
            logger.info("tool %s answered after a barge-in; sent SILENT", call.name)
            scheduling = Scheduling.SILENT
        return types.FunctionResponse(
            id=call_id, name=call.name, response=answer.response, scheduling=scheduling
        )

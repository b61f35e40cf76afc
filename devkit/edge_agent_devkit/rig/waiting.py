"""Polling until something is true: what the tests and the appliance rig wait with."""

from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_TIMEOUT_S = 10.0  # generous: the machines are shared and slow


def wait_until(
    predicate: Callable[[], bool], timeout: float = DEFAULT_TIMEOUT_S, poll_s: float = 0.005
) -> bool:
    """True as soon as `predicate()` is; after `timeout` seconds, its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()

"""Reconnect policy: backoff shape, jitter, reset, and the failure classifier."""

from __future__ import annotations

import random

import pytest

from edge_agent.config import ReconnectConfig
from edge_agent.core.backoff import (
    Backoff,
    Failure,
    FailureKind,
    ReconnectPolicy,
    Verdict,
    capped_exponential,
    classify,
)

KEY_REJECTED = Failure(
    FailureKind.CLOSED, 1007, "API key not valid. Please pass a valid API key.", during_setup=True
)
STALE_HANDLE = Failure(
    FailureKind.CLOSED, 1007, "Request contains an invalid argument.", True, resuming=True
)


def cfg(**kw: float) -> ReconnectConfig:
    base = dict(initial_delay_s=0.5, max_delay_s=30.0, multiplier=2.0, jitter=1.0)
    base.update(kw)
    return ReconnectConfig(**base)


def test_backoff_doubles_up_to_the_cap_without_jitter() -> None:
    b = Backoff(cfg(jitter=0.0), random=lambda: 0.7)
    assert [b.delay(n) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert b.delay(10_000) == 30.0  # no float overflow for huge attempt counts


def test_full_jitter_is_uniform_below_the_exponential_base() -> None:
    b = Backoff(cfg(jitter=1.0), random=lambda: 0.75)
    assert b.delay(3) == pytest.approx(4.0 * 0.25)
    assert Backoff(cfg(jitter=1.0), random=lambda: 0.0).delay(3) == 4.0
    half = Backoff(cfg(jitter=0.5), random=lambda: 0.999999)
    assert 2.0 <= half.delay(3) <= 4.0


def test_multiplier_one_keeps_the_initial_delay() -> None:
    b = Backoff(cfg(multiplier=1.0, jitter=0.0), random=lambda: 0.3)
    assert b.delay(0) == b.delay(50) == 0.5


def test_capped_exponential_is_the_device_reopen_delay() -> None:
    """The audio supervisor's reopen delays: no jitter, attempt 0 again after a reset."""
    assert [capped_exponential(n, 0.5, 3.0, 2.0) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert capped_exponential(10**9, 0.05, 0.2, 2.0) == 0.2  # no overflow
    assert capped_exponential(7, 0.5, 3.0, 1.0) == 0.5  # multiplier 1: flat
    assert capped_exponential(0, 5.0, 3.0, 2.0) == 3.0  # initial above the cap: the cap


def test_backoff_without_jitter_is_capped_exponential() -> None:
    b = Backoff(cfg(jitter=0.0), random=lambda: 0.9)
    assert all(b.delay(n) == capped_exponential(n, 0.5, 30.0, 2.0) for n in range(12))


@pytest.mark.parametrize(
    ("failure", "verdict"),
    [
        (Failure(FailureKind.NETWORK, None, "Connection refused"), Verdict.RETRY),
        (Failure(FailureKind.SETUP_TIMEOUT), Verdict.RETRY),
        (Failure(FailureKind.CLOSED, 1006, "Abnormal closure."), Verdict.RETRY),
        (Failure(FailureKind.CLOSED, 1011, "Deadline expired"), Verdict.RETRY),
        (Failure(FailureKind.CLOSED, 1000, ""), Verdict.RETRY),
        (KEY_REJECTED, Verdict.FATAL),
        (
            Failure(FailureKind.CLOSED, 1008, "Method doesn't allow unregistered callers"),
            Verdict.FATAL,
        ),
        (Failure(FailureKind.CLOSED, 1008, "The caller does not have permission"), Verdict.FATAL),
        (
            Failure(FailureKind.CLOSED, 1008, "The operation was aborted.", after_go_away=True),
            Verdict.HANDOVER,
        ),
        # the same text without a goAway before it is a policy close, not a handover
        (Failure(FailureKind.CLOSED, 1008, "The operation was aborted."), Verdict.FATAL),
        (STALE_HANDLE, Verdict.DROP_HANDLE),
        (Failure(FailureKind.HTTP, 403, ""), Verdict.FATAL),
        (Failure(FailureKind.HTTP, 404, ""), Verdict.FATAL),
        (Failure(FailureKind.HTTP, 503, ""), Verdict.RETRY),
        (Failure(FailureKind.HTTP, 429, ""), Verdict.RETRY),
        (Failure(FailureKind.NO_KEY, None, "no key file"), Verdict.FATAL),
    ],
)
def test_classifier(failure: Failure, verdict: Verdict) -> None:
    assert classify(failure) is verdict


def test_second_invalid_argument_in_a_row_is_fatal() -> None:
    assert classify(STALE_HANDLE, invalid_streak=1) is Verdict.FATAL


def test_policy_grows_delays_and_resets_only_after_a_stable_connection() -> None:
    policy = ReconnectPolicy(cfg(jitter=0.0), random=lambda: 0.5)
    net = Failure(FailureKind.NETWORK, None, "unreachable")
    delays = [policy.failed(net, now=float(i)).delay_s for i in range(4)]
    assert delays == [0.5, 1.0, 2.0, 4.0]
    # a connection that comes up but dies quickly does not reset the backoff
    policy.connected(now=100.0)
    assert policy.failed(net, now=110.0).delay_s == 8.0
    # one that stayed up for stable_after_s (60 s) does
    policy.connected(now=200.0)
    assert policy.failed(net, now=260.0).delay_s == 0.5


def test_fatal_waits_the_slow_delay_until_config_changes() -> None:
    policy = ReconnectPolicy(cfg(fatal_retry_delay_s=300.0), random=lambda: 0.5)
    for now in (0.0, 300.0, 600.0):
        decision = policy.failed(KEY_REJECTED, now)
        assert decision.fatal and decision.delay_s == 300.0 and decision.verdict is Verdict.FATAL
        assert "API key not valid" in decision.reason
    assert policy.fatal
    policy.config_changed()
    assert not policy.fatal and policy.attempts == 0


def test_refused_handle_retries_fresh_at_once_then_a_repeat_is_fatal() -> None:
    policy = ReconnectPolicy(cfg(), random=lambda: 0.5)
    first = policy.failed(STALE_HANDLE, now=0.0)
    assert first.verdict is Verdict.DROP_HANDLE and first.drop_handle and first.delay_s == 0.0
    bad_setup = Failure(FailureKind.CLOSED, 1007, "Invalid voice", during_setup=True)
    second = policy.failed(bad_setup, now=1.0)
    assert second.fatal and second.delay_s == policy.cfg.fatal_retry_delay_s


def test_successful_setup_clears_the_invalid_argument_streak() -> None:
    policy = ReconnectPolicy(cfg(jitter=0.0), random=lambda: 0.5)
    policy.failed(STALE_HANDLE, now=0.0)
    policy.connected(now=1.0)
    mid_session = Failure(FailureKind.CLOSED, 1007, "Invalid argument")
    decision = policy.failed(mid_session, now=5.0)
    # not fatal, and not immediate: it was not a refusal while resuming
    assert decision.verdict is Verdict.DROP_HANDLE and decision.delay_s > 0


def test_handover_is_not_a_failure() -> None:
    policy = ReconnectPolicy(cfg(jitter=0.0), random=lambda: 0.5)
    policy.failed(Failure(FailureKind.NETWORK), now=0.0)
    policy.connected(now=1.0)
    decision = policy.failed(
        Failure(FailureKind.CLOSED, 1008, "The operation was aborted.", after_go_away=True), 541.0
    )
    assert decision.verdict is Verdict.HANDOVER and decision.delay_s == 0.0 and not decision.fatal
    assert policy.attempts == 0  # and the 540 s connection was stable: counters reset
    policy.connected(now=600.0)
    assert policy.handed_over(now=1140.0) == 0.0


def test_handovers_right_after_setup_back_off() -> None:
    """A server that sends goAway at once must not make the client reconnect in a loop."""
    policy = ReconnectPolicy(cfg(jitter=0.0), random=lambda: 0.5)
    delays = []
    for i in range(5):
        policy.connected(now=float(i))
        delays.append(policy.handed_over(now=i + 0.5))
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_never_a_hot_loop_attempts_per_hour_are_bounded() -> None:
    """Simulate an hour of a rejected key with the policy's own delays."""
    policy = ReconnectPolicy(cfg(fatal_retry_delay_s=300.0), random=lambda: 0.0)
    now, attempts = 0.0, 0
    while now < 3600.0:
        attempts += 1
        now += policy.failed(KEY_REJECTED, now).delay_s
    assert attempts == 12
    # a network outage with full jitter: a seeded uniform source, mean delay 15 s at the cap
    policy = ReconnectPolicy(cfg(), random=random.Random(7).random)
    now, attempts = 0.0, 0
    while now < 3600.0:
        attempts += 1
        now += policy.failed(Failure(FailureKind.NETWORK), now).delay_s
    assert 3600.0 / 30.0 <= attempts <= 2 * 3600.0 / 15.0


BUSY_RESUME = Failure(
    FailureKind.CLOSED, 1011, "Internal error encountered.", during_setup=True, resuming=True
)


def test_resume_refused_with_1011_backs_off_then_abandons_the_handle() -> None:
    """The server still holds the old connection: not forever with the same handle."""
    policy = ReconnectPolicy(cfg(jitter=0.0), random=lambda: 0.5)
    first, second = (policy.failed(BUSY_RESUME, now=float(i)) for i in range(2))
    assert [d.verdict for d in (first, second)] == [Verdict.RETRY, Verdict.RETRY]
    assert [d.delay_s for d in (first, second)] == [0.5, 1.0]
    assert not first.drop_handle and not second.drop_handle
    third = policy.failed(BUSY_RESUME, now=2.0)
    assert third.verdict is Verdict.ABANDON_HANDLE and third.drop_handle
    assert third.delay_s == 0.0 and not third.fatal and "1011" in third.reason
    # the count starts over: a fresh session that hits 1011s again is a plain retry
    assert policy.failed(BUSY_RESUME, now=3.0).verdict is Verdict.RETRY


def test_busy_resume_count_needs_refusals_with_no_good_setup_between() -> None:
    policy = ReconnectPolicy(cfg(jitter=0.0), random=lambda: 0.5)
    policy.failed(BUSY_RESUME, now=0.0)
    policy.failed(Failure(FailureKind.NETWORK, None, "unreachable"), now=1.0)  # a roam blip
    policy.failed(BUSY_RESUME, now=2.0)
    policy.connected(now=3.0)  # a good setup clears the count
    assert policy.failed(BUSY_RESUME, now=4.0).verdict is Verdict.RETRY
    assert policy.failed(BUSY_RESUME, now=5.0).verdict is Verdict.RETRY
    assert policy.failed(BUSY_RESUME, now=6.0).verdict is Verdict.ABANDON_HANDLE


@pytest.mark.parametrize(
    "failure",
    [
        Failure(FailureKind.CLOSED, 1011, "Deadline expired", during_setup=True),  # fresh
        Failure(FailureKind.CLOSED, 1011, "Deadline expired", resuming=True),  # after setup
    ],
)
def test_other_1011s_never_abandon_the_handle(failure: Failure) -> None:
    policy = ReconnectPolicy(cfg(jitter=0.0), random=lambda: 0.5)
    decisions = [policy.failed(failure, now=float(i)) for i in range(6)]
    assert all(d.verdict is Verdict.RETRY and not d.drop_handle for d in decisions)

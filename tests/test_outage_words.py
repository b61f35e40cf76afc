"""Pure pieces of the network-fault reporting: one log line per failure per outage, the
plain words for what failed, and the STATUS= 'offline' text."""

from __future__ import annotations

import socket
import ssl

import pytest

from edge_agent.app.health import offline_text
from edge_agent.core.backoff import Failure, FailureKind
from edge_agent.core.replay import ReplayLog
from edge_agent.live.failures import (
    describe_setup_timeout,
    describe_transport_error,
    endpoint_of,
)
from edge_agent.live.outage import OutageLog, Recovery
from edge_agent.live.protocol import LiveStatus, SessionState

pytestmark = pytest.mark.shelf


def test_each_failure_of_an_outage_is_news_once_and_the_recovery_closes_it() -> None:
    log = OutageLog()
    assert log.connected(0.0) is None  # no outage: nothing to tell
    assert log.failed("refused", 10.0)
    assert not log.failed("refused", 11.0)
    assert log.failed("expired", 12.0)  # a different failure is news
    assert not log.failed("refused", 13.0)
    assert log.connected(18.5) == Recovery(outage_s=8.5, failures=4)
    assert log.failed("refused", 30.0)  # a new outage tells it again


def test_endpoint_names_host_and_port() -> None:
    assert endpoint_of("https://127.0.0.1:8443") == "127.0.0.1:8443"
    assert endpoint_of("https://example.invalid") == "example.invalid"
    assert endpoint_of("") == "generativelanguage.googleapis.com"


def _cert_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    err = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    err.verify_code, err.verify_message = code, message
    return err


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (ConnectionRefusedError(111, "Connect call failed"), "cannot reach the Live API at H "
         "(connection refused)"),
        (socket.gaierror(-2, "Name or service not known"), "cannot resolve the name of the "
         "Live API host H (Name or service not known)"),
        (_cert_error(10, "certificate has expired"), "the TLS certificate of H has expired"),
        (_cert_error(20, "unable to get local issuer certificate"),
         "the TLS certificate of H is not trusted (unable to get local issuer certificate)"),
        (_cert_error(9, "certificate is not yet valid"),
         "the TLS certificate of H is not valid yet (is the clock right?)"),
        (OSError(113, "No route to host"), "cannot reach the Live API at H (no route to host)"),
    ],
)  # fmt: skip
def test_transport_errors_in_plain_words(exc: OSError, words: str) -> None:
    assert describe_transport_error(exc, "H") == words


def test_network_failures_describe_themselves_without_a_kind_prefix() -> None:
    reason = describe_setup_timeout("H", 5.0)
    assert Failure(FailureKind.SETUP_TIMEOUT, reason=reason).describe() == reason
    assert Failure(FailureKind.NETWORK, reason="x").describe() == "x"
    assert Failure(FailureKind.CLOSED, 1011, "deadline").describe() == "closed 1011: deadline"


def _status(state: SessionState, *, retry_in_s: float | None, fatal: bool = False) -> LiveStatus:
    return LiveStatus(
        state=state, ready=False, last_error="cannot reach X", fatal=fatal,
        retry_in_s=retry_in_s, reconnect_count=3, connection_attempts=4, handovers=0,
        bad_frames=0, tool_calls_running=0, handle_age_s=None,
        replay=ReplayLog.for_seconds(1).stats(),
    )  # fmt: skip


def test_offline_text_while_retrying_only() -> None:
    retrying = _status(SessionState.RETRY_WAIT, retry_in_s=7.2)
    assert offline_text(retrying) == "offline: cannot reach X; retrying in 8 s"
    connecting = _status(SessionState.CONNECTING, retry_in_s=None)
    assert offline_text(connecting) == "offline: cannot reach X; trying again now"
    assert offline_text(_status(SessionState.IDLE, retry_in_s=None)) is None
    assert offline_text(_status(SessionState.FATAL, retry_in_s=300, fatal=True)) is None

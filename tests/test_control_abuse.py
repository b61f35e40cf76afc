"""Control socket abuse: malformed, oversized and slow requests, silent clients, a flood.

The server (``app.control.ControlServer``) runs on a real asyncio loop with a real Unix
socket; clients are real sockets. The limits: a request line of at most
``MAX_REQUEST_BYTES`` (4096) bytes, complete within ``CLIENT_TIMEOUT_S`` (5 s) of
connecting, at most ``MAX_CLIENTS`` (32) connections at once; the unit tests shorten the
timeout and the client count to keep the wall time small. One end-to-end test does it all
to the real daemon (its real ``ControlCommands``, with the shipped limits) while a
well-behaved client keeps asking for ``status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge_agent.app.control import (
    CLIENT_TIMEOUT_S,
    EVICTABLE_AFTER_S,
    MAX_REQUEST_BYTES,
    ControlServer,
    control_request,
)

pytestmark = pytest.mark.shelf

TIMEOUT_S = 0.5  # the unit tests' client timeout
CLIENTS = 8  # the unit tests' connection limit


async def handler(request: dict[str, Any]) -> dict[str, Any]:
    """Echoes, except for the commands that make a handler misbehave."""
    cmd = request.get("cmd")
    if cmd == "boom":
        raise RuntimeError("a bug in a command")
    if cmd == "overflow":
        return {"ok": True, "n": int(float("inf"))}
    if cmd == "unjson":
        return {"ok": True, "value": object()}
    if cmd == "slow":
        await asyncio.sleep(0.2)
    return {"ok": True, "cmd": cmd if isinstance(cmd, str) else None}


class Rig:
    """One server on a loop of its own thread, so blocking clients can talk to it."""

    def __init__(self, path: Path, **limits: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = ControlServer(path, handler, **limits)
        self.path = path
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Rig:
        self.thread.start()
        self.call(self.server.start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def connect(self, timeout_s: float = 5.0) -> socket.socket:
        return connect(self.path, timeout_s)


def connect(path: Path, timeout_s: float = 5.0) -> socket.socket:
    """A client socket; a full listen backlog (EAGAIN on a Unix socket) is waited out, as a
    flooding client would."""
    deadline = time.monotonic() + timeout_s
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
            return sock
        except BlockingIOError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.002)


def exchange(sock: socket.socket, payload: bytes, *, half_close: bool = True) -> bytes:
    """Send the payload (the server may close before taking it all), read to EOF."""
    with contextlib.suppress(OSError):
        sock.sendall(payload)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def one_answer(data: bytes) -> dict[str, Any]:
    """Exactly one JSON line with ``ok``."""
    assert data.endswith(b"\n") and data.count(b"\n") == 1, data[:200]
    answer = json.loads(data)
    assert isinstance(answer, dict) and isinstance(answer["ok"], bool), answer
    return answer


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with Rig(tmp_path_factory.mktemp("ctl") / "control.sock", client_timeout_s=TIMEOUT_S) as r:
        yield r


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
commands = st.sampled_from(["status", "boom", "overflow", "unjson", "nope", ""]) | json_values
requests = st.one_of(
    st.binary(max_size=300),  # anything, newline or not
    st.binary(max_size=50).map(lambda b: b"\xff\xfe" + b + b"\n"),  # not UTF-8
    json_values.map(lambda v: json.dumps(v).encode() + b"\n"),  # JSON, rarely an object
    st.builds(
        lambda cmd, extra: json.dumps({"cmd": cmd, **extra}).encode() + b"\n",
        commands,
        st.dictionaries(st.text(max_size=5), json_values, max_size=3),
    ),
    st.integers(1, 4000).map(lambda n: b"[" * n + b"\n"),  # nested past json's recursion
    st.builds(lambda cmd: json.dumps({"cmd": cmd}).encode(), commands),  # no newline: EOF ends it
)


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=requests)
@example(payload=b'{"cmd": "boom"}\n')
@example(payload=b'{"cmd": "overflow"}\n')
@example(payload=b'{"cmd": "unjson"}\n')
@example(payload=b"[" * 4000 + b"\n")
def test_every_malformed_request_gets_one_error_line_and_nothing_lingers(
    rig: Rig, payload: bytes
) -> None:
    with rig.connect() as sock:
        answer = one_answer(exchange(sock, payload))
    first = payload.split(b"\n", 1)[0]
    try:
        request = json.loads(first)
    except (ValueError, RecursionError):
        request = None
    if not isinstance(request, dict):
        assert answer["ok"] is False and answer["error"].startswith("bad request"), answer
    elif request.get("cmd") in ("boom", "unjson"):
        assert answer == {"ok": False, "error": answer["error"]}
        assert answer["error"].startswith("internal error")
    elif request.get("cmd") == "overflow":
        assert answer["ok"] is False and answer["error"].startswith("bad request")
    else:
        assert answer["ok"] is True
    deadline = time.monotonic() + 2
    while rig.server.clients and time.monotonic() < deadline:
        time.sleep(0.005)
    assert rig.server.clients == 0


def test_request_size_is_bounded_at_the_limit(rig: Rig) -> None:
    def request_of(size: int) -> bytes:
        """A JSON request of ``size`` bytes, and its newline."""
        head = b'{"cmd": "status", "pad": "'
        return head + b"x" * (size - len(head) - 2) + b'"}\n'

    fits = request_of(MAX_REQUEST_BYTES)
    assert len(fits) == MAX_REQUEST_BYTES + 1
    with rig.connect() as sock:
        assert one_answer(exchange(sock, fits))["ok"] is True
    for size in (MAX_REQUEST_BYTES + 1, 64 * 1024, 4 * 1024 * 1024):
        with rig.connect() as sock:
            answer = one_answer(exchange(sock, request_of(size)))
        assert answer == {"ok": False, "error": f"request longer than {MAX_REQUEST_BYTES} bytes"}


def test_silent_and_slow_clients_are_cut_off_without_holding_anyone_up(rig: Rig) -> None:
    silent = rig.connect()
    slow = rig.connect()
    started = time.monotonic()
    slow_answer: list[bytes] = []

    def trickle() -> None:
        with contextlib.suppress(OSError):
            for byte in b'{"cmd": "status"}\n':
                slow.sendall(bytes([byte]))
                time.sleep(TIMEOUT_S / 5)  # the whole line would take 3.6 timeouts
        slow_answer.append(exchange(slow, b"", half_close=False))

    trickler = threading.Thread(target=trickle)
    trickler.start()
    # Meanwhile everybody else is served at once.
    for _ in range(5):
        t0 = time.monotonic()
        assert control_request(rig.path, {"cmd": "status"}, timeout_s=2)["ok"] is True
        assert time.monotonic() - t0 < TIMEOUT_S / 2
    silent_answer = one_answer(exchange(silent, b"", half_close=False))
    waited = time.monotonic() - started
    trickler.join(10)
    silent.close()
    slow.close()
    expected = {"ok": False, "error": f"no complete request line within {TIMEOUT_S:g} s"}
    assert silent_answer == expected and one_answer(slow_answer[0]) == expected
    assert TIMEOUT_S * 0.9 <= waited < TIMEOUT_S + 1.0


def test_a_flood_is_bounded_and_status_keeps_being_served(tmp_path: Path) -> None:
    with Rig(tmp_path / "control.sock", client_timeout_s=2.0, max_clients=CLIENTS) as r:
        flood: list[socket.socket] = []
        peak = 0
        stop = threading.Event()

        def watch() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, r.server.clients)
                time.sleep(0.001)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            for _ in range(300):  # idle connections, all at once
                flood.append(r.connect())
            answers = []
            for _ in range(10):
                answers.append(control_request(r.path, {"cmd": "status"}, timeout_s=2))
                flood.append(r.connect())  # the flood goes on between requests
                time.sleep(EVICTABLE_AFTER_S * 1.2)  # the flood's sockets become evictable
            # A burst of real requests at once: each answered, ok or busy, none hangs.
            burst = [r.connect() for _ in range(100)]
            replies = []
            for sock in burst:
                with contextlib.suppress(OSError):
                    sock.sendall(b'{"cmd": "slow"}\n')
            for sock in burst:
                replies.append(exchange(sock, b"", half_close=False))
                sock.close()
        finally:
            stop.set()
            watcher.join()
            for sock in flood:
                sock.close()
        assert all(a == {"ok": True, "cmd": "status"} for a in answers), answers
        assert peak <= CLIENTS, "connections held at once must stay bounded"
        assert r.server.evicted > 0 and r.server.refused > 0
        for data in replies:  # each one line: answered, busy, or closed to make room
            answer = one_answer(data)
            assert answer["ok"] or answer["error"].startswith(("busy", "closed to make room"))
        assert sum(b'"ok": true' in d for d in replies) >= CLIENTS // 2


# ---- the real daemon ------------------------------------------------------------------------


@contextlib.contextmanager
def _abusers(path: Path) -> Iterator[dict[str, list[bytes]]]:
    """Idle connections, a client sending a byte a second, a 1 MB request and junk, all
    at once against the daemon, for as long as the block runs."""
    results: dict[str, list[bytes]] = {"slow": [], "huge": [], "junk": []}
    idle: list[socket.socket] = []

    def slow() -> None:
        with connect(path, CLIENT_TIMEOUT_S + 5) as sock:
            with contextlib.suppress(OSError):
                for byte in b'{"cmd": "status"}\n':
                    sock.sendall(bytes([byte]))
                    time.sleep(1.0)
            results["slow"].append(exchange(sock, b"", half_close=False))

    def huge() -> None:
        with connect(path, 10) as sock:
            results["huge"].append(exchange(sock, b'{"cmd": "' + b"a" * 2**20 + b'"}\n'))

    def junk() -> None:
        for payload in (b"\x00\xff\xfe\n", b"not json\n", b"[1, 2]\n", b'{"cmd": 5}\n'):
            with connect(path, 10) as sock:
                results["junk"].append(exchange(sock, payload))

    threads = [threading.Thread(target=f) for f in (slow, huge, junk)]
    for thread in threads:
        thread.start()
    for _ in range(200):
        idle.append(connect(path, 10))
    try:
        yield results
    finally:
        for thread in threads:
            thread.join(CLIENT_TIMEOUT_S + 20)
        for sock in idle:
            sock.close()


real_requests = st.fixed_dictionaries(
    {"cmd": st.sampled_from(["status", "timers", "history", "volume", "mute", "unmute", "x"])},
    optional={"n": json_values, "percent": json_values, "action": json_values},
)


@pytest.mark.timeout(240)
def test_the_real_daemon_keeps_serving_through_abuse(tmp_path: Path) -> None:
    from edge_agent_devkit.rig import speech
    from edge_agent_devkit.rig.appliance import Appliance, ApplianceOptions

    if not speech.espeak_available():
        pytest.skip("espeak-ng is needed by the appliance rig")
    with Appliance(tmp_path, ApplianceOptions()) as app:
        app.start()
        path = app.state_dir / "control.sock"
        with _abusers(path) as results:
            # The well-behaved client, all through the abuse (the slow one takes ~18 s).
            latencies = []
            for _ in range(12):
                t0 = time.monotonic()
                assert control_request(path, {"cmd": "status"}, timeout_s=3)["ok"] is True
                latencies.append(time.monotonic() - t0)
                time.sleep(0.5)
            # Fuzzed arguments to the real commands, one answer line each.
            fuzzed = _fuzzed_real_requests(path)
        assert max(latencies) < 1.0, latencies
        timeout_error = f"no complete request line within {CLIENT_TIMEOUT_S:g} s"
        # Timed out, or closed earlier to make room for the flood (it was the oldest).
        slow_error = one_answer(results["slow"][0])["error"]
        assert slow_error == timeout_error or slow_error.startswith("closed to make room")
        assert one_answer(results["huge"][0])["error"].startswith("request longer than")
        assert all(one_answer(d)["ok"] is False for d in results["junk"])
        assert fuzzed >= 100
        assert "Traceback" not in app.log_text(), app.log_text()[-3000:]
        assert control_request(path, {"cmd": "status"})["ok"] is True
        assert app.stop()[0] == 0


def _fuzzed_real_requests(path: Path) -> int:
    count = 0

    @settings(max_examples=100, deadline=None, derandomize=True, database=None)
    @given(real_requests)
    @example({"cmd": "history", "n": 1e400})
    @example({"cmd": "volume", "percent": [50]})
    def ask(request: dict[str, Any]) -> None:
        nonlocal count
        with connect(path, 5) as sock:
            one_answer(exchange(sock, json.dumps(request).encode() + b"\n"))
        count += 1

    ask()
    control_request(path, {"cmd": "unmute"})
    return count

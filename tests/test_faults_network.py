"""Network faults against the real daemon: refused, no DNS, bad TLS, silent partition,
a server that never answers the upgrade.

Every fault is made with real sockets on loopback (``edge_agent_devkit.rig.netproxy``
between the daemon and the emulator, trustme certificates), never by mocking the SDK or
websockets. For each: the daemon stays up; STATUS= and ``edge-agent status`` say what is
wrong in plain words; the log says it once, however many retries; it recovers by itself
when the fault clears; and the question the user asked during the outage reaches the
emulator whole (located frame by frame in what the emulator consumed).

Timing overrides (each also commented where it is set): the Appliance already shortens
the reconnect backoff (0.2 s initial, 2 s cap) and the setup timeout (5 s); keepalive
goes to its config floor of 5 s / 5 s so a partition is seen within 10 s.
"""

from __future__ import annotations

import base64
import contextlib
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import trustme

from edge_agent_devkit.bench import system as bench_system
from edge_agent_devkit.emulator.tls import server_context, write_ca_bundle
from edge_agent_devkit.rig import speech
from edge_agent_devkit.rig.appliance import Appliance, ApplianceOptions, LogLine
from edge_agent_devkit.rig.netproxy import Mode, NetProxy, free_port

pytestmark = [
    pytest.mark.shelf,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not speech.espeak_available(), reason="espeak-ng is needed for speech"),
]

QUESTION = "what is the weather like in the mountains tomorrow"
LOST_RE = r"Live connection lost: "
BACK_RE = r"Live connection back after ([\d.]+) s \((\d+) failed attempts\)"
BYTES_PER_FRAME = bench_system.FRAME * 2  # 10 ms of 16 kHz s16le


@dataclass
class Outage:
    """What one fault looked like from outside, for the report."""

    fault: str
    detected_s: float  # from the fault (or the press) to the first log line about it
    log_line: str
    status: str
    recovered_s: float  # from clearing the fault to the connection back
    lost_bytes: int  # speech of the question that never reached the emulator

    def report(self) -> None:
        print(
            f"\n[{self.fault}] detected after {self.detected_s:.1f} s; log: {self.log_line!r}; "
            f"STATUS: {self.status!r}; recovered {self.recovered_s:.1f} s after the fault "
            f"cleared; speech lost: {self.lost_bytes} bytes"
        )


def question_clip() -> np.ndarray:
    asked = speech.trim(speech.synthesize(QUESTION, voice="en-us"))
    return speech.concat(speech.silence(0.3), asked, speech.silence(0.6))


def lost_speech_bytes(record: dict | None, clip: np.ndarray) -> int:
    """Bytes of the clip's speech (10 ms frames holding speech) that no session the
    emulator recorded received: what the user said and the service never heard."""
    assert record is not None and record.get("sessions"), record
    active = bench_system.active_frames(clip)
    best_missing = int(active.sum())
    for session in record["sessions"]:
        received = np.frombuffer(base64.b64decode(session["consumed_audio_b64"]), dtype="<i2")
        if received.size < bench_system.FRAME:
            continue
        covered = bench_system.locate_blocks(received, clip)
        n = active.size
        frames = covered[: n * bench_system.FRAME].reshape(n, bench_system.FRAME).any(axis=1)
        best_missing = min(best_missing, int((active & ~frames).sum()))
    return best_missing * BYTES_PER_FRAME


def emulator_address(app: Appliance) -> tuple[str, int]:
    parts = urlsplit(app.emulator.base_url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def offline_statuses(app: Appliance, text: str) -> list[str]:
    assert app.notify is not None
    return [s for s in app.notify.statuses() if f"offline: {text}" in s]


def log_count(app: Appliance, pattern: str) -> int:
    rx = re.compile(pattern)
    return sum(1 for line in app.log_text().splitlines() if rx.search(line))


def lost_and_shown(app: Appliance, what: str, since: float) -> tuple[LogLine, str]:
    """The loss logged (after `since`) and shown in three STATUS lines: the log line and
    the last of them."""
    line = app.wait_log(LOST_RE + re.escape(what), 15, since)
    assert line is not None, app.log_text()[-4000:]
    assert app.wait_until(lambda: len(offline_statuses(app, what)) >= 3, 15)
    return line, offline_statuses(app, what)[-1]


@contextlib.contextmanager
def proxy_to(app: Appliance) -> Iterator[NetProxy]:
    proxy = NetProxy(*emulator_address(app))
    try:
        yield proxy
    finally:
        proxy.stop()


def ask(app: Appliance, clip: np.ndarray) -> float:
    """Press the button and say the question; returns the press time."""
    t0 = app.press()
    app.say(clip)
    return t0


def expect_answered(app: Appliance, since: float) -> float:
    """The connection comes back and the question is answered; returns when it came back."""
    back = app.wait_log(BACK_RE, 30, since)
    assert back is not None, app.log_text()[-4000:]
    assert app.wait_state("follow_up", 40, since), app.log_text()[-4000:]
    return back.t


def expect_alive_and_stop(app: Appliance) -> None:
    assert app.proc is not None and app.proc.poll() is None, "the daemon died"
    for bad in ("Traceback", "crashed"):
        assert bad not in app.log_text(), app.log_text()[-4000:]
    assert app.stop()[0] == 0


def base_options(**config: dict) -> ApplianceOptions:
    # --no-espeak: a tone for a reply, so no test waits on speech synthesis.
    return ApplianceOptions(emulator_args=["--no-espeak"], config=config)


def test_connection_refused_until_the_server_comes_back(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: every connect is refused
    clip = question_clip()
    opts = base_options(gemini={"base_url": f"https://127.0.0.1:{port}"})
    with Appliance(tmp_path, opts) as app:
        app.start()
        with proxy_to(app) as proxy:
            t0 = ask(app, clip)
            what = f"cannot reach the Live API at 127.0.0.1:{port} (connection refused)"
            first = app.wait_log(LOST_RE + re.escape(what), 15, t0)
            assert first is not None, app.log_text()[-4000:]
            assert app.wait_state("thinking", 15, t0), app.log_text()[-4000:]
            # Several attempts (one STATUS= each), still one log line.
            assert app.wait_until(lambda: len(offline_statuses(app, what)) >= 3, 15)
            assert log_count(app, re.escape(what)) == 1, app.log_text()[-4000:]
            status_line = offline_statuses(app, what)[-1]
            assert re.search(r"retrying in \d+ s", status_line), status_line
            snap = app.status()
            assert snap["state"] == "thinking" and not snap["session"]["ready"]
            assert (snap["session"]["offline"] or "").startswith(f"offline: {what}"), snap
            # The status LED blinks evenly over the conversation's own LEDs: reconnecting.
            assert snap["leds"]["status"] == "blink 0.5/0.5s", snap["leds"]
            shown = app.cli("status")
            assert shown.returncode == 0 and f"offline: {what}" in shown.stdout, shown

            t_fix = time.monotonic()
            proxy.start(port)  # the server comes back on the same port
            t_back = expect_answered(app, t_fix)
            assert log_count(app, BACK_RE) == 1
            assert app.status()["leds"]["status"] != "blink 0.5/0.5s"  # back: no longer shown
            expect_alive_and_stop(app)
    lost = lost_speech_bytes(app.record, clip)
    Outage(
        "connection refused", first.t - t0, first.text, status_line, t_back - t_fix, lost
    ).report()
    assert lost == 0


def test_name_resolution_failure_until_a_reload_fixes_the_base_url(tmp_path: Path) -> None:
    """A name that never resolves (.invalid is reserved): nothing clears it by itself, so
    the owner fixes gemini.base_url and reloads; the question asked meanwhile survives."""
    host = "edge-agent-emulator.invalid"
    clip = question_clip()
    with Appliance(tmp_path, base_options()) as app:
        app.start()
        port = emulator_address(app)[1]
        bad = app.config_text(gemini={"base_url": f"https://{host}:{port}"})
        app.config_path.write_text(bad)
        t_reload = time.monotonic()
        app.signal(signal.SIGHUP)
        assert app.wait_log(r"configuration reloaded", 30, t_reload), app.log_text()[-4000:]

        t0 = ask(app, clip)
        what = f"cannot resolve the name of the Live API host {host}:{port}"
        first = app.wait_log(LOST_RE + re.escape(what), 15, t0)
        assert first is not None, app.log_text()[-4000:]
        assert app.wait_state("thinking", 15, t0), app.log_text()[-4000:]
        assert app.wait_until(lambda: len(offline_statuses(app, what)) >= 3, 15)
        assert log_count(app, re.escape(what)) == 1, app.log_text()[-4000:]
        status_line = offline_statuses(app, what)[-1]
        assert (app.status()["session"]["offline"] or "").startswith(f"offline: {what}")

        app.config_path.write_text(app.config_text())  # the emulator's own address again
        t_fix = time.monotonic()
        app.signal(signal.SIGHUP)
        t_back = expect_answered(app, t_fix)
        expect_alive_and_stop(app)
    lost = lost_speech_bytes(app.record, clip)
    Outage("name resolution", first.t - t0, first.text, status_line, t_back - t_fix, lost).report()
    assert lost == 0


def tls_options(tmp_path: Path, proxy_ca: trustme.CA, port: int) -> ApplianceOptions:
    """The daemon trusts the emulator's CA and the proxy's (one bundle file): the proxy
    can then answer TLS itself with a certificate the daemon trusts, or an expired one."""
    bundle = write_ca_bundle(tmp_path / "trusted-cas.pem", proxy_ca)  # exists for check-config
    return base_options(gemini={"base_url": f"https://127.0.0.1:{port}", "ca_file": str(bundle)})


def trust_the_emulator_too(app: Appliance, proxy_ca: trustme.CA) -> None:
    """The emulator's CA exists once it started; the daemon reads the bundle at its first
    connection, which no test makes before this."""
    write_ca_bundle(app.workdir / "trusted-cas.pem", proxy_ca, app.emulator.ca_pem)


def test_untrusted_then_expired_certificate_until_the_server_is_fixed(tmp_path: Path) -> None:
    """A server with a certificate from a CA the daemon does not trust, then one it trusts
    but expired yesterday: two different failures, each logged once."""
    port, proxy_ca, stranger_ca = free_port(), trustme.CA(), trustme.CA()
    clip = question_clip()
    with Appliance(tmp_path, tls_options(tmp_path, proxy_ca, port)) as app:
        app.start()
        trust_the_emulator_too(app, proxy_ca)
        with proxy_to(app) as proxy:
            proxy.start(port)
            proxy.set_mode(Mode.SWALLOW, tls=server_context(stranger_ca))
            t0 = ask(app, clip)
            untrusted = f"the TLS certificate of 127.0.0.1:{port} is not trusted"
            first, status_untrusted = lost_and_shown(app, untrusted, t0)

            t_expired = time.monotonic()
            proxy.set_mode(Mode.SWALLOW, tls=server_context(proxy_ca, expired=True))
            expired = f"the TLS certificate of 127.0.0.1:{port} has expired"
            second, status_expired = lost_and_shown(app, expired, t_expired)
            assert log_count(app, re.escape(untrusted)) == 1, app.log_text()[-4000:]
            assert log_count(app, re.escape(expired)) == 1, app.log_text()[-4000:]
            # Six attempts were refused (three STATUS= lines each); the proxy counts a failed
            # handshake when the client has closed, which may come just after the STATUS.
            assert app.wait_until(lambda: proxy.stats.tls_handshakes_failed >= 6, 5)
            assert app.wait_state("thinking", 15, t0), app.log_text()[-4000:]

            t_fix = time.monotonic()
            proxy.set_mode(Mode.FORWARD)
            t_back = expect_answered(app, t_fix)
            assert log_count(app, BACK_RE) == 1
            expect_alive_and_stop(app)
    lost = lost_speech_bytes(app.record, clip)
    Outage(
        "untrusted CA", first.t - t0, first.text, status_untrusted, t_back - t_fix, lost
    ).report()
    Outage(
        "expired certificate", second.t - t_expired, second.text, status_expired,
        t_back - t_fix, lost,
    ).report()  # fmt: skip
    assert lost == 0


def test_server_accepts_but_never_answers_the_upgrade(tmp_path: Path) -> None:
    """TCP and TLS (a trusted certificate) complete, the HTTP upgrade request is read and
    never answered: the connect timeout (gemini.setup_timeout_s, 5 s in the rig) covers
    the upgrade, not only setupComplete."""
    port, proxy_ca = free_port(), trustme.CA()
    clip = question_clip()
    with Appliance(tmp_path, tls_options(tmp_path, proxy_ca, port)) as app:
        app.start()
        trust_the_emulator_too(app, proxy_ca)
        with proxy_to(app) as proxy:
            proxy.start(port)
            proxy.set_mode(Mode.SWALLOW, tls=server_context(proxy_ca))
            t0 = ask(app, clip)
            what = f"no answer from the Live API at 127.0.0.1:{port} within 5 s"
            first = app.wait_log(LOST_RE + re.escape(what), 15, t0)
            assert first is not None, app.log_text()[-4000:]
            assert proxy.stats.requests_swallowed >= 1  # it got as far as the upgrade
            assert app.wait_until(lambda: proxy.stats.requests_swallowed >= 2, 10)
            assert app.wait_until(lambda: len(offline_statuses(app, what)) >= 1, 10)
            status_line = offline_statuses(app, what)[-1]
            assert app.status()["state"] == "thinking"

            t_fix = time.monotonic()
            proxy.set_mode(Mode.FORWARD)  # the attempt in flight still times out; the next works
            t_back = expect_answered(app, t_fix)
            assert log_count(app, re.escape(what)) == 1, app.log_text()[-4000:]
            expect_alive_and_stop(app)
    lost = lost_speech_bytes(app.record, clip)
    Outage("never upgrades", first.t - t0, first.text, status_line, t_back - t_fix, lost).report()
    assert lost == 0


def test_silent_partition_mid_question_and_while_idle_connected(tmp_path: Path) -> None:
    """No bytes and no FIN either way: only the keepalive can tell. Mid-question, the
    question must still be answered once the partition heals; while idle with the
    session kept open, the session is given up and the next press connects again."""
    port = free_port()
    clip = question_clip()
    opts = base_options(
        gemini={
            "base_url": f"https://127.0.0.1:{port}",
            # The config floor (5 s each): a partition is seen 5-10 s after it starts
            # (plus websockets' 2 s close timeout), instead of up to 90 s as shipped.
            "keepalive_ping_interval_s": 5.0,
            "keepalive_ping_timeout_s": 5.0,
        },
        # Shortened: reach the idle-but-connected state 1 s after the reply.
        conversation={"follow_up_s": 1.0},
    )
    with Appliance(tmp_path, opts) as app:
        app.start()
        with proxy_to(app) as proxy:
            proxy.start(port)
            t0 = app.press()
            assert app.wait_log(r"Live session ready", 15, t0), app.log_text()[-4000:]
            app.say(clip)
            time.sleep(1.0)  # 0.3 s of silence, then 0.7 s into the question
            t_cut = time.monotonic()
            proxy.set_mode(Mode.BLACKHOLE)
            first = app.wait_log(LOST_RE, 20, t_cut)
            assert first is not None, app.log_text()[-4000:]
            assert app.wait_until(lambda: bool(offline_statuses(app, "")), 5)
            status_mid = offline_statuses(app, "")[-1]
            t_heal = time.monotonic()
            proxy.set_mode(Mode.FORWARD)  # held bytes flow again, as TCP would retransmit
            t_back = expect_answered(app, t_heal)

            # Idle, session kept open (idle_close_s as shipped: 20 s).
            assert app.wait_state("idle", 20, t_back), app.log_text()[-4000:]
            assert app.status()["session"]["ready"]
            t_cut2 = time.monotonic()
            proxy.set_mode(Mode.BLACKHOLE)
            second = app.wait_log(LOST_RE, 20, t_cut2)
            assert second is not None, app.log_text()[-4000:]
            assert app.wait_log(r"Live session closed", 5, t_cut2), app.log_text()[-4000:]
            snap = app.status()
            status_idle = app.notify.statuses()[-1] if app.notify else ""
            assert snap["state"] == "idle" and not snap["session"]["ready"], snap
            t_heal2 = time.monotonic()
            proxy.set_mode(Mode.FORWARD)
            t1 = ask(app, question_clip())
            assert app.wait_log(r"Live session ready", 15, t1), app.log_text()[-4000:]
            assert app.wait_state("follow_up", 40, t1), app.log_text()[-4000:]
            t_back2 = app.wait_log(r"Live session ready", 1, t1)
            # One line per partition, however the attempts went.
            assert log_count(app, LOST_RE) == 2, app.log_text()[-4000:]
            expect_alive_and_stop(app)
    lost = lost_speech_bytes(app.record, clip)
    Outage(
        "partition mid-question", first.t - t_cut, first.text, status_mid, t_back - t_heal, lost
    ).report()
    assert t_back2 is not None
    Outage(
        "partition idle-connected", second.t - t_cut2, second.text, status_idle,
        t_back2.t - t_heal2, 0,
    ).report()  # fmt: skip
    assert lost == 0

"""Talking to systemd: readiness, status text, watchdog pings, reload and stop notices.

A thin wrapper around ``systemd.daemon.notify`` (sd_notify(3)). Outside systemd
(``NOTIFY_SOCKET`` unset: a developer's shell, the tests, ``edge-agent demo``) every call
is a no-op, so the daemon calls it unconditionally.

The shipped unit (``systemd/edge-agent.service``) is ``Type=notify`` with
``WatchdogSec=30`` and ``ExecReload=/bin/kill -HUP $MAINPID``. The daemon:

- ``ready(status)`` once the audio devices are open and the wake word runs;
- ``watchdog()`` every ``watchdog_ping_interval_s()`` seconds, but only while
  ``edge_agent.core.watchdog.WatchdogGate`` says the appliance is healthy;
- ``reloading()`` on SIGHUP before applying the new config, then ``ready(status)``;
- ``status(text)`` on notable changes (state, offline reason), so ``systemctl status``
  tells a person over SSH what the device is doing;
- ``stopping()`` when it starts shutting down.

``RELOADING=1`` carries ``MONOTONIC_USEC=``: systemd 253+ requires it for
``Type=notify-reload`` and older versions ignore it, so the same code works with both.

Sending never raises: a vanished socket is logged once and the daemon carries on.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

Sender = Callable[[str], bool]


def _sd_notify(message: str) -> bool:
    """systemd-python's sd_notify, falling back to the plain datagram protocol."""
    try:
        from systemd import daemon
    except ImportError:  # pragma: no cover - systemd-python is a dependency
        return send_datagram(message)
    return bool(daemon.notify(message))


def send_datagram(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """The sd_notify protocol by hand: one datagram to $NOTIFY_SOCKET (``@`` = abstract)."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode("utf-8"))
    return True


def _one_line(text: str) -> str:
    # A newline would start a new KEY=VALUE assignment in the notify message.
    return " ".join(text.split())


class SystemdNotifier:
    """sd_notify messages for the service manager; a no-op outside systemd.

    ``environ`` is read once, at construction (``NOTIFY_SOCKET`` decides whether to
    send at all); ``send`` delivers one message and is ``systemd.daemon.notify`` by
    default, which reads ``NOTIFY_SOCKET`` from the process environment itself.
    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        send: Sender | None = None,
        monotonic_usec: Callable[[], int] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self._send = send or _sd_notify
        self._monotonic_usec = monotonic_usec or (
            lambda: time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        )
        self._failed = False

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments as one message; True when it was sent."""
        if not self.enabled or not assignments:
            return False
        message = "\n".join(assignments)
        try:
            sent = self._send(message)
        except OSError as exc:
            if not self._failed:  # once: the watchdog would repeat it every few seconds
                log.warning("cannot notify systemd (%s); carrying on", exc)
            self._failed = True
            return False
        if sent and self._failed:
            log.info("systemd notifications work again")
            self._failed = False
        return bool(sent)

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete."""
        extra = () if status is None else (f"STATUS={_one_line(status)}",)
        return self.notify("READY=1", *extra)

    def status(self, text: str) -> bool:
        """Free-form text shown by ``systemctl status``."""
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """Keep-alive ping for ``WatchdogSec=``."""
        return self.notify("WATCHDOG=1")

    def reloading(self, status: str | None = None) -> bool:
        """A reload has begun; send ``ready()`` when it is done."""
        extra = () if status is None else (f"STATUS={_one_line(status)}",)
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={self._monotonic_usec()}", *extra)

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun."""
        extra = () if status is None else (f"STATUS={_one_line(status)}",)
        return self.notify("STOPPING=1", *extra)


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """The service's watchdog timeout (``WatchdogSec=``), or None when there is none.

    None also when ``WATCHDOG_PID`` names another process (the variable was inherited
    by a child) or ``WATCHDOG_USEC`` is malformed.
    """
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1_000_000


def watchdog_ping_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """How often to ping: half the watchdog timeout, as sd_watchdog_enabled(3) advises."""
    interval = watchdog_interval_s(environ)
    return None if interval is None else interval / 2

"""A TCP proxy between the daemon and the Live API emulator that can break the network.

The faults of a home network that no mock of ours would show truthfully, made with real
sockets on loopback so the daemon's real SDK, websockets and TLS stack meet them:

- ``Mode.FORWARD``: bytes flow both ways (the healthy network).
- ``Mode.BLACKHOLE``: a silent partition. Nothing moves in either direction and no
  socket is closed: no FIN, no RST, just silence, as when a router drops off. Bytes
  already read are held, not dropped (TCP would retransmit them), and flow when the mode
  goes back to FORWARD. New connections are accepted and held the same way (the kernel
  completes the TCP handshake of a listening socket; a real partition would drop the SYN:
  either way the client's TLS handshake never gets an answer).
- ``Mode.SWALLOW``: a server that accepts TCP and never answers. With ``tls`` it first
  completes a TLS handshake with that context: a certificate the client trusts gets as
  far as the HTTP upgrade request, which is read and never answered; a certificate from
  a CA the client does not trust, or an expired one, makes the client give up during
  the handshake (the TLS faults). Without ``tls`` nothing is answered at all. Applies to
  connections accepted while the mode holds; established ones keep forwarding.
- Connection refused: nothing listens. ``free_port()`` names a port nobody listens on;
  ``start(port)`` later opens it, as a server coming back.

The proxy runs its own event loop on a thread, so synchronous tests drive it (it works
the same under an async test: its loop is not the test's).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from dataclasses import dataclass
from enum import StrEnum

CHUNK = 65536
TLS_HANDSHAKE_TIMEOUT_S = 10.0


class Mode(StrEnum):
    FORWARD = "forward"
    BLACKHOLE = "blackhole"
    SWALLOW = "swallow"


@dataclass
class ProxyStats:
    accepted: int = 0  # TCP connections accepted
    forwarded_bytes: int = 0  # both directions
    tls_handshakes_failed: int = 0  # SWALLOW with tls: the client refused the certificate
    requests_swallowed: int = 0  # SWALLOW: HTTP requests read and never answered


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now: connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class NetProxy:
    """Loopback TCP proxy to ``upstream`` with switchable faults (module docstring)."""

    def __init__(self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0
        self.stats = ProxyStats()
        self._mode = Mode.FORWARD
        self._tls: ssl.SSLContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None  # set while FORWARD
        self._writers: set[asyncio.StreamWriter] = set()  # both ends of every connection
        self._lock = threading.Lock()

    # ---- control (any thread) ---------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    def start(self, port: int = 0) -> int:
        """Listen on ``port`` (0: any free one); returns the port."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="netproxy", daemon=True
            )
            self._thread.start()
        self._call(self._listen(port))
        return self.port

    def set_mode(self, mode: Mode, tls: ssl.SSLContext | None = None) -> None:
        """Switch the fault; ``tls`` is only used by SWALLOW (see the module docstring)."""
        self._call(self._set_mode(Mode(mode), tls))

    def stop(self) -> None:
        """Close the listener and every connection; stop the thread."""
        loop = self._loop
        if loop is None:
            return
        self._call(self._shutdown())
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        loop.close()
        self._loop = None

    def __enter__(self) -> NetProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: object) -> None:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        future.result(10)

    # ---- on the proxy's loop ------------------------------------------------------------

    async def _listen(self, port: int) -> None:
        if self._flowing is None:
            self._flowing = asyncio.Event()
            self._flowing.set()
        self._server = await asyncio.start_server(self._accepted, self.host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _set_mode(self, mode: Mode, tls: ssl.SSLContext | None) -> None:
        self._mode, self._tls = mode, tls
        assert self._flowing is not None
        if mode is Mode.BLACKHOLE:
            self._flowing.clear()
        else:
            self._flowing.set()

    async def _shutdown(self) -> None:
        """Abort every socket (the handlers then end on their own: cancelling a task that
        asyncio's server started makes asyncio log an error)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._flowing is not None:
            self._flowing.set()
        for writer in list(self._writers):
            writer.transport.abort()
        for _ in range(100):
            if not self._writers:
                break
            await asyncio.sleep(0.01)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self.stats.accepted += 1
        try:
            if self._mode is Mode.SWALLOW:
                await self._swallow(reader, writer, self._tls)
            else:
                await self._forward(reader, writer)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            _close(writer)
            self._writers.discard(writer)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        await self._flowing.wait()  # a connection made during a partition waits it out
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers.add(up_writer)
        try:
            pumps = [
                asyncio.ensure_future(self._pump(reader, up_writer)),
                asyncio.ensure_future(self._pump(up_reader, writer)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.wait(pumps)
        finally:
            _close(up_writer)
            self._writers.discard(up_writer)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        flowing = self._flowing
        assert flowing is not None
        while True:
            await flowing.wait()
            data = await src.read(CHUNK)
            if not data:
                return
            await flowing.wait()  # read just before a partition: held, sent after it
            dst.write(data)
            await dst.drain()
            self.stats.forwarded_bytes += len(data)

    async def _swallow(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        tls: ssl.SSLContext | None,
    ) -> None:
        if tls is not None:
            try:
                await writer.start_tls(tls, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S)
            except (ssl.SSLError, OSError, TimeoutError):
                self.stats.tls_handshakes_failed += 1
                return
            with contextlib.suppress(asyncio.LimitOverrunError):
                await reader.readuntil(b"\r\n\r\n")
                self.stats.requests_swallowed += 1
        while await reader.read(CHUNK):  # never answer; wait for the client to give up
            pass


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()

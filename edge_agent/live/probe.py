"""`edge-agent probe`: one Live session, step by step, for an owner on SSH.

"The device does not answer" has many causes (DNS, a gateway's certificate, a refused
key, a retired model, a setting the model hangs on). The probe walks the same path the
daemon takes, with the same key, model, base_url and CA, times each step, and stops at
the first one that fails, so the verdict names the cause and the exit code lets a script
act on it. The key is never printed: every detail goes through ``redact``.

The service checks the key and the model only once the setup message is in, so
"authentication" and "model accepted" share the time of the setup's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from urllib.parse import urlsplit

from google import genai
from google.genai import errors, types
from websockets.exceptions import InvalidStatus

from edge_agent.config import GeminiConfig
from edge_agent.live.connect_config import (
    build_http_options,
    build_live_connect_config,
    ssl_context_for,
)
from edge_agent.secrets import redact

DEFAULT_HOST = "generativelanguage.googleapis.com"
SILENT_TURN_S = 0.5
TURN_TIMEOUT_S = 15.0
_CHUNK_S = 0.1


class ProbeExit(IntEnum):
    """Exit codes of `edge-agent probe` (README, Commands)."""

    OK = 0
    CONFIG = 2  # config invalid or no API key
    NETWORK = 3  # name not resolved, or no TCP connection
    TLS = 4  # TLS handshake failed (certificate not trusted, wrong host)
    AUTH = 5  # the API key was refused or is missing
    MODEL = 6  # the model is retired, unknown, or not a Live model
    SETUP = 7  # the setup was refused or never answered
    TURN = 8  # set up, but a short silent turn got no answer


@dataclass
class ProbeStep:
    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class ProbeReport:
    model: str
    endpoint: str
    steps: list[ProbeStep] = field(default_factory=list)
    exit: ProbeExit = ProbeExit.OK
    verdict: str = ""

    def lines(self) -> list[str]:
        """The report as printed: one line per step, then the verdict."""
        out = [f"probe: {self.model} at {self.endpoint}"]
        for step in self.steps:
            mark = "ok  " if step.ok else "FAIL"
            detail = f"  {step.detail}" if step.detail else ""
            out.append(f"  {mark} {step.name:<16} {step.seconds * 1000:7.0f} ms{detail}")
        out.append(f"verdict: {self.verdict} (exit {int(self.exit)})")
        return [redact(line) for line in out]


class _Failed(Exception):
    def __init__(self, code: ProbeExit, verdict: str) -> None:
        super().__init__(verdict)
        self.code = code
        self.verdict = verdict


def endpoint_of(cfg: GeminiConfig) -> tuple[str, int]:
    """(host, port) the session connects to."""
    if not cfg.base_url:
        return DEFAULT_HOST, 443
    url = urlsplit(cfg.base_url)
    return url.hostname or DEFAULT_HOST, url.port or 443


def _trust(cfg: GeminiConfig) -> ssl.SSLContext:
    """The CA trust the session uses: ca_file, else SSL_CERT_FILE, else the system's."""
    ctx = ssl_context_for(cfg)
    if ctx is not None:
        return ctx
    return ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or None)


class Probe:
    """One probe run; ``clock`` is injectable so step times can be checked."""

    def __init__(
        self,
        cfg: GeminiConfig,
        api_key: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        turn_timeout_s: float = TURN_TIMEOUT_S,
    ) -> None:
        self.cfg = cfg
        self._key = api_key
        self._clock = clock
        self._turn_timeout_s = turn_timeout_s
        host, port = endpoint_of(cfg)
        self.report = ProbeReport(model=cfg.model, endpoint=f"{host}:{port}")

    async def run(self) -> ProbeReport:
        try:
            ctx = await asyncio.to_thread(_trust, self.cfg)
            await self._resolve()
            await self._tls(ctx)
            await self._session(ctx)
        except _Failed as failed:
            self.report.exit, self.report.verdict = failed.code, failed.verdict
            return self.report
        self.report.verdict = f"OK: {self.cfg.model} answers through {self.report.endpoint}"
        return self.report

    def _step(self, name: str, started: float, ok: bool, detail: str = "") -> None:
        self.report.steps.append(ProbeStep(name, ok, self._clock() - started, detail))

    async def _resolve(self) -> None:
        host, port = endpoint_of(self.cfg)
        started = self._clock()
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            self._step("name resolution", started, False, str(exc))
            raise _Failed(ProbeExit.NETWORK, f"cannot resolve {host}: check DNS") from None
        self._step("name resolution", started, True, str(infos[0][4][0]))

    async def _tls(self, ctx: ssl.SSLContext) -> None:
        host, port = endpoint_of(self.cfg)
        started = self._clock()
        try:
            async with asyncio.timeout(self.cfg.setup_timeout_s):
                _reader, writer = await asyncio.open_connection(
                    host, port, ssl=ctx, server_hostname=host
                )
        except ssl.SSLCertVerificationError as exc:
            self._step("TLS", started, False, exc.verify_message or str(exc))
            hint = "set gemini.ca_file to its CA" if self.cfg.base_url else "check the clock"
            raise _Failed(
                ProbeExit.TLS, f"the certificate of {host} is not trusted ({hint})"
            ) from None
        except ssl.SSLError as exc:
            self._step("TLS", started, False, str(exc))
            raise _Failed(ProbeExit.TLS, f"TLS with {host} failed") from None
        except (OSError, TimeoutError) as exc:
            self._step("TLS", started, False, str(exc) or "timed out")
            raise _Failed(ProbeExit.NETWORK, f"cannot connect to {host}:{port}") from None
        version = writer.get_extra_info("ssl_object").version()
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        self._step("TLS", started, True, f"{version}, certificate trusted")

    async def _session(self, ctx: ssl.SSLContext) -> None:
        # The probe marks its own turn, so the server's VAD is off whatever the config says.
        cfg = dataclasses.replace(self.cfg, server_vad=False, session_resumption=False)
        client = genai.Client(api_key=self._key, http_options=build_http_options(cfg, ctx))
        config = build_live_connect_config(cfg, None)
        started = self._clock()
        try:
            async with asyncio.timeout(cfg.setup_timeout_s):
                session_cm = client.aio.live.connect(model=cfg.model, config=config)
                session = await session_cm.__aenter__()
        except TimeoutError:
            self._step("setupComplete", started, False, f"none after {cfg.setup_timeout_s:g} s")
            raise _Failed(
                ProbeExit.SETUP,
                "the service never answered the setup (a setting this model does not take?)",
            ) from None
        except errors.APIError as exc:
            self._setup_refused(started, exc.code, exc.message or str(exc))
        except InvalidStatus as exc:
            status = exc.response.status_code
            self._step("authentication", started, False, f"HTTP {status}")
            code = ProbeExit.AUTH if status in (401, 403) else ProbeExit.NETWORK
            raise _Failed(code, f"the endpoint refused the connection (HTTP {status})") from None
        answered = self._clock() - started
        for name, detail in (
            ("authentication", "key accepted"),
            ("model accepted", cfg.model),
            ("setupComplete", ""),
        ):
            self.report.steps.append(ProbeStep(name, True, answered, detail))
        try:
            await self._silent_turn(session)
        finally:
            await session_cm.__aexit__(None, None, None)

    def _setup_refused(self, started: float, code: int, message: str) -> None:
        text = f"{code} {message}"
        if "API key" in message or "unregistered callers" in message:
            self._step("authentication", started, False, text)
            raise _Failed(ProbeExit.AUTH, "the API key was refused: check it") from None
        self._step("authentication", started, True, "key accepted")
        if "is not found for API version" in message or "bidiGenerateContent" in message:
            self._step("model accepted", started, False, text)
            raise _Failed(
                ProbeExit.MODEL,
                f"{self.cfg.model} is retired or not a Live model: "
                "set gemini.model (or gemini.fallback_models) to a current one",
            ) from None
        self._step("setupComplete", started, False, text)
        raise _Failed(ProbeExit.SETUP, f"the service refused the setup ({code})") from None

    async def _silent_turn(self, session: genai.live.AsyncSession) -> None:
        silence = bytes(int(16_000 * _CHUNK_S) * 2)
        started = self._clock()
        try:
            async with asyncio.timeout(self._turn_timeout_s):
                await session.send_realtime_input(activity_start=types.ActivityStart())
                for _ in range(round(SILENT_TURN_S / _CHUNK_S)):
                    blob = types.Blob(data=silence, mime_type="audio/pcm;rate=16000")
                    await session.send_realtime_input(audio=blob)
                sent = self._clock()
                await session.send_realtime_input(activity_end=types.ActivityEnd())
                async for message in session.receive():
                    content = message.server_content
                    if content is not None and content.turn_complete:
                        break
        except (TimeoutError, errors.APIError, OSError) as exc:
            detail = "no turnComplete" if isinstance(exc, TimeoutError) else str(exc)
            self._step("silent turn", started, False, detail)
            raise _Failed(ProbeExit.TURN, "set up, but a short silent turn got no answer") from None
        round_trip_ms = (self._clock() - sent) * 1000
        self._step("silent turn", started, True, f"{round_trip_ms:.0f} ms after activityEnd")


async def run_probe(cfg: GeminiConfig, api_key: str) -> ProbeReport:
    """Probe the configured Live endpoint once."""
    return await Probe(cfg, api_key).run()

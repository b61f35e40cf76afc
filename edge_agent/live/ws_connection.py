"""The websocket connection class the SDK's Live connections use: how they close.

google-genai opens each Live connection as ``async with websockets.connect(...)``, and
websockets closes a connection whose ``async with`` body raised with 1011 (internal
error), whatever the exception was. The daemon leaves a connection on purpose by
cancelling the task that holds it: on SIGTERM, on ``close()`` while connecting, and when
``setupComplete`` does not arrive within ``setup_timeout_s`` (``asyncio.timeout`` cancels
the SDK's wait for it). Those are normal closures, and the server should see 1000, as
after an idle close; a 1011 tells it the client broke.

``websockets.connect`` takes the class to build through its documented
``create_connection`` argument, which reaches it through ``HttpOptions.async_client_args``
like the keepalive settings (see ``live.connect_config``).
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from websockets.asyncio.client import ClientConnection
from websockets.frames import CloseCode


class LiveClientConnection(ClientConnection):
    """A ClientConnection that closes with 1000 when its holder is cancelled."""

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None or issubclass(exc_type, asyncio.CancelledError):
            await self.close(CloseCode.NORMAL_CLOSURE)
        else:
            await self.close(CloseCode.INTERNAL_ERROR)

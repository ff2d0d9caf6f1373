"""What lk_probe knows of a ``livekit.api`` client, shared by the API patch and the dispatch watch: where a service
object sends its calls, how a failed call is classified, and the flag that marks the watch's own calls."""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass
from typing import Any

from . import _catalogue as c

# set while lk_probe's own watch calls the API: those calls are counted on the watch, not traced one by one
quiet: contextvars.ContextVar[bool] = contextvars.ContextVar("lk_probe_api_quiet", default=False)


@dataclass(frozen=True)
class Creds:
    """Where a service object sends its calls, to open a client of our own for a watch."""

    url: str
    api_key: str = ""
    api_secret: str = ""
    token: str = ""


def creds_of(service: Any) -> Creds:
    client = getattr(service, "_client", None)
    return Creds(str(getattr(client, "host", "")), getattr(service, "api_key", "") or "",
                 getattr(service, "api_secret", "") or "", getattr(service, "_token", None) or "")


def classify(exc: BaseException) -> tuple[str, int | None]:
    """(``error.type``, HTTP status or None) of a failed API call: the Twirp code as it came, else the transport's
    failure class."""
    code, status = getattr(exc, "code", None), getattr(exc, "status", None)
    if isinstance(code, str) and code and isinstance(status, int):
        return code, status
    if isinstance(exc, asyncio.CancelledError):
        return c.ERR_CANCELLED, None
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout", None
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - livekit.api depends on aiohttp
        return "error", None
    if isinstance(exc, getattr(aiohttp, "ClientConnectorDNSError", ())) or "Name or service not known" in str(exc) \
            or "nodename nor servname" in str(exc):
        return "dns", None
    if isinstance(exc, getattr(aiohttp, "ClientConnectorCertificateError", ())) or \
            isinstance(exc, getattr(aiohttp, "ClientSSLError", ())):
        return "tls", None
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "refused", None
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        return "closed", None
    return "error", None

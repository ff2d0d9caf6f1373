"""What a signal request carries, and the wire values signalling answers with.

- :func:`parse_rtc_request`: an ``/rtc`` (v0: query parameters) or ``/rtc/v1`` (``join_request`` = base64url
  WrappedJoinRequest, optionally gzip, see :func:`decode_join_request`) upgrade request, with its token checked,
  as an :class:`RtcRequest`;
- :func:`authorize`: the join token (``Authorization: Bearer`` or ``access_token``) checked against the double's key
  pair and grants, also for validate;
- :func:`reason_name`, :data:`LEAVE_ACTIONS` and :func:`leave_request`: disconnect reasons and the Leave message.

A request the double refuses raises :class:`SignalError` carrying the HTTP status to answer with.
"""

from __future__ import annotations

import base64
import gzip
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

from ._core import AuthError, ServerDouble, bearer, verify_token

LEAVE_ACTIONS = {"DISCONNECT": rtc.LeaveRequest.DISCONNECT, "RESUME": rtc.LeaveRequest.RESUME,
                 "RECONNECT": rtc.LeaveRequest.RECONNECT}

_REASON_WORDS = {"removed": "PARTICIPANT_REMOVED", "room deleted": "ROOM_DELETED", "duplicate": "DUPLICATE_IDENTITY",
                 "shutdown": "SERVER_SHUTDOWN", "migration": "MIGRATION"}


class SignalError(Exception):
    """A refused signal / validate request: answered with HTTP ``status`` and ``reason`` as the body."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _b64decode(s: str) -> bytes:
    s = s.strip().replace("-", "+").replace("_", "/")
    return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)


def decode_join_request(raw: str) -> rtc.JoinRequest:
    """``join_request`` = base64url(WrappedJoinRequest{compression, join_request}); raise SignalError(400)."""
    try:
        data = _b64decode(raw)
    except Exception:
        raise SignalError(400, "malformed join_request: not base64") from None
    try:
        wrapped = rtc.WrappedJoinRequest()
        wrapped.ParseFromString(data)
        inner = wrapped.join_request
        if wrapped.compression == rtc.WrappedJoinRequest.GZIP:
            inner = gzip.decompress(inner)
        jr = rtc.JoinRequest()
        jr.ParseFromString(inner)
    except (DecodeError, OSError, EOFError, ValueError) as e:
        raise SignalError(400, f"malformed join_request: {e.__class__.__name__}: {e}") from None
    return jr


def reason_name(reason: str | int, *, strict: bool = False) -> str:
    """A ``DisconnectReason`` name from a name, a number or (unless ``strict``) a free-form phrase."""
    if isinstance(reason, int):
        return models.DisconnectReason.Name(reason)
    name = reason.strip().upper().replace(" ", "_")
    if name in models.DisconnectReason.keys():
        return name
    if strict:
        raise ValueError(f"unknown disconnect reason {reason!r}; one of {', '.join(models.DisconnectReason.keys())}")
    for word, mapped in _REASON_WORDS.items():
        if word in reason.lower():
            return mapped
    return "UNKNOWN_REASON"


def leave_request(action: str, reason: str) -> rtc.LeaveRequest:
    """Leave{reason, action} for an action of :data:`LEAVE_ACTIONS` and a ``DisconnectReason`` name."""
    act = LEAVE_ACTIONS[action]
    return rtc.LeaveRequest(can_reconnect=act != rtc.LeaveRequest.DISCONNECT,
                            reason=models.DisconnectReason.Value(reason), action=act)


def _sdk_name(v: int) -> str:
    try:
        return models.ClientInfo.SDK.Name(v)
    except ValueError:
        return str(v)


def authorize(request: web.Request, double: ServerDouble) -> dict[str, Any]:
    """The claims of the request's join token; SignalError(401) unless it is valid, names a room, grants roomJoin
    and has an identity."""
    token = bearer(request.headers, request.query)
    if not token:
        raise SignalError(401, "no access token (Authorization: Bearer)")
    try:
        claims = verify_token(token, double.api_key, double.api_secret)
    except AuthError as e:
        raise SignalError(401, str(e)) from None
    video = claims.get("video") or {}
    if not video.get("roomJoin"):
        raise SignalError(401, "permissions denied: token has no roomJoin grant")
    if not video.get("room"):
        raise SignalError(401, "permissions denied: token names no room")
    if not claims.get("sub"):
        raise SignalError(401, "invalid token: no identity")
    return claims


@dataclass
class RtcRequest:
    """A signal upgrade request as the session needs it."""

    path: str  # "v0" (/rtc) or "v1" (/rtc/v1)
    claims: dict[str, Any]  # of the checked join token
    client: dict[str, Any]  # sdk, protocol, version, client_protocol, auto_subscribe
    reconnect: bool  # a resume of participant ``sid``
    sid: str
    offer_sdp: str = ""  # v1: the publisher offer carried by the join request
    offer_id: int = 0

    @property
    def identity(self) -> str:
        return str(self.claims["sub"])

    @property
    def room(self) -> str:
        return str(self.claims["video"]["room"])


def parse_rtc_request(request: web.Request, path: str, double: ServerDouble) -> RtcRequest:
    """Parse ``/rtc`` (``path="v0"``) or ``/rtc/v1`` (``"v1"``) and check its token; raise SignalError (400, 401)."""
    try:
        if path == "v1":
            raw = request.query.get("join_request")
            if not raw:
                raise SignalError(400, "missing join_request")
            jr = decode_join_request(raw)
            offer = jr.publisher_offer if jr.HasField("publisher_offer") else None
            req = RtcRequest(
                path=path, claims={}, reconnect=bool(jr.reconnect), sid=jr.participant_sid,
                client={"sdk": _sdk_name(jr.client_info.sdk), "protocol": jr.client_info.protocol,
                        "version": jr.client_info.version, "client_protocol": jr.client_info.client_protocol,
                        "auto_subscribe": jr.connection_settings.auto_subscribe},
                offer_sdp=offer.sdp if offer is not None else "", offer_id=offer.id if offer is not None else 0)
        else:
            q = request.query
            req = RtcRequest(
                path=path, claims={}, reconnect=q.get("reconnect") in ("1", "true"), sid=q.get("sid", ""),
                client={"sdk": q.get("sdk", ""), "protocol": int(q.get("protocol") or 0),
                        "version": q.get("version", ""), "client_protocol": int(q.get("client_protocol") or 0),
                        "auto_subscribe": q.get("auto_subscribe", "1") not in ("0", "false")})
        req.claims = authorize(request, double)
    except ValueError as e:
        raise SignalError(400, f"malformed query: {e}") from None
    return req

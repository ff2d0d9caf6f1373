"""The plain HTTP endpoints next to signalling: validate and the region list.

- ``GET /rtc/validate`` and ``/rtc/v1/validate``: what the SDK asks after a failed signal upgrade, to tell a token or
  request problem (its status and reason) from a server problem. Faults: ``validate_hang``, ``validate_status``.
- ``GET /settings/regions``: the LiveKit-Cloud region list (``{"regions": [{"region", "url", "distance"}]}``, as
  rust-sdks' RegionUrlResponse reads it) with one region, this double. Fault: ``region_hang``.

Each answer is an event (``validate``, ``region_fetch``) with its status (None when held) and reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ._core import AuthError, bearer, verify_token
from ._signal_wire import SignalError, authorize, decode_join_request

if TYPE_CHECKING:
    from ._signal import SignalService


class HttpEndpoints:
    def __init__(self, svc: SignalService) -> None:
        self.svc = svc

    async def validate(self, request: web.Request) -> web.StreamResponse:
        svc = self.svc
        identity = None
        error: SignalError | None = None
        try:
            identity = authorize(request, svc.double)["sub"]
            if request.path.startswith("/rtc/v1") and request.query.get("join_request"):
                decode_join_request(request.query["join_request"])
        except SignalError as e:
            error = e
        # faults first: a hanging / failing server answers nothing useful, token or not (livekit 1.1.2 sends validate
        # without a token)
        if svc.take("validate_hang", identity) is not None:
            await svc.hold(request, svc.hang_max)
            svc.record("validate", path=request.path, status=None, identity=identity, reason="held")
            return web.Response(status=503, text="lk_probe fault: validate_hang")
        f = svc.take("validate_status", identity)
        if f is not None:
            status = int(f.params.get("status", 500))
            error = SignalError(status, f"lk_probe fault: validate_status {status}")
        status, reason = (error.status, error.reason) if error is not None else (200, "success")
        svc.record("validate", path=request.path, status=status, identity=identity, reason=reason)
        return web.Response(status=status, text=reason)

    async def regions(self, request: web.Request) -> web.StreamResponse:
        svc = self.svc
        token = bearer(request.headers, request.query)
        identity = None
        try:
            if not token:
                raise AuthError("no access token")
            identity = verify_token(token, svc.double.api_key, svc.double.api_secret).get("sub")
        except AuthError as e:
            svc.record("region_fetch", status=401, identity=identity, reason=str(e))
            return web.Response(status=401, text=str(e))
        if svc.take("region_hang", identity) is not None:
            await svc.hold(request, svc.hang_max)
            svc.record("region_fetch", status=None, identity=identity, reason="held")
            return web.Response(status=503, text="lk_probe fault: region_hang")
        scheme = "https" if request.secure else "http"
        body = {"regions": [{"region": svc.double.region, "url": f"{scheme}://{request.host}", "distance": "0"}]}
        svc.record("region_fetch", status=200, identity=identity, reason="ok")
        return web.json_response(body)

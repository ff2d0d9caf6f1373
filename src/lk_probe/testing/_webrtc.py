"""Server side of the WebRTC peer connections of the LiveKit double (aiortc), loopback only.

What this module adds on top of aiortc / aioice:

- ``RTCConfiguration(iceServers=[])`` everywhere (aiortc would otherwise contact a public STUN server);
- aioice gathers only ``127.0.0.1`` (it normally gathers every interface *except* 127.0.0.1);
- loopback guard: remote candidates and STUN peers outside 127.0.0.0/8 are dropped (unless the double was
  built with ``allow_non_loopback``; the switch is process-wide because aioice is patched process-wide);
- an ICE-restart shim: aiortc ignores new remote ICE credentials, so on an offer with a new ``a=ice-ufrag`` the
  aioice connection's remote username/password are swapped (our own credentials stay; libwebrtc accepts that);
- candidate stripping for the ``ice_never`` fault and trickle buffering until the remote description is set;
- sending media (a simulated caller's track): placed on a ``recvonly`` audio m-line of a client offer, or added to a
  server offer, with the msid ``<participant sid>|<track sid> <track sid>`` livekit clients resolve it by.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
from typing import Any, Callable

from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

log = logging.getLogger("lk_probe.testing.webrtc")

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


class PeerClosed(Exception):
    """The peer was closed (participant gone) while a negotiation was waiting for it."""


class _Policy:
    allow_non_loopback = False


POLICY = _Policy()


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]) in LOOPBACK
    except ValueError:
        return False  # a hostname / mDNS name: never resolved here


def address_allowed(host: str | None) -> bool:
    return POLICY.allow_non_loopback or is_loopback(host)


# --------------------------------------------------------------------------------------------------------
# aioice patches (idempotent, process-wide)

_patched = False


def install_aioice_patches() -> None:
    global _patched
    if _patched:
        return
    import aioice.ice as ice

    original_hosts = ice.get_host_addresses

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        if POLICY.allow_non_loopback:
            return original_hosts(use_ipv4, use_ipv6)
        return ["127.0.0.1"] if use_ipv4 else []

    ice.get_host_addresses = get_host_addresses

    original_request = ice.Connection.request_received

    def request_received(self, message, addr, protocol):  # type: ignore[no-untyped-def]
        if not address_allowed(addr[0]):
            log.debug("dropping STUN request from non-loopback %s", addr)
            return None
        return original_request(self, message, addr, protocol)

    ice.Connection.request_received = request_received

    original_add = ice.Connection.add_remote_candidate

    async def add_remote_candidate(self, remote_candidate):  # type: ignore[no-untyped-def]
        if remote_candidate is not None and not address_allowed(remote_candidate.host):
            log.debug("dropping non-loopback remote candidate %s", remote_candidate.host)
            return None
        return await original_add(self, remote_candidate)

    ice.Connection.add_remote_candidate = add_remote_candidate
    _patched = True


# --------------------------------------------------------------------------------------------------------
# SDP helpers

_CAND_RE = re.compile(r"^a=candidate:(\S+) (\d+) (\S+) (\d+) (\S+) (\d+) typ (\S+)")


def _candidate_host(line: str) -> tuple[str, str] | None:
    m = _CAND_RE.match(line.strip())
    if not m:
        return None
    return m.group(3).lower(), m.group(5)


def filter_remote_sdp(sdp: str) -> str:
    """Drop remote ``a=candidate`` lines that are not UDP on a permitted (loopback) address."""
    out = []
    for line in sdp.splitlines():
        c = _candidate_host(line)
        if c is not None and (c[0] != "udp" or not address_allowed(c[1])):
            continue
        out.append(line)
    return "\r\n".join(out) + "\r\n"


def strip_candidates(sdp: str) -> str:
    """Remove our candidates from an SDP (``ice_never``: the client never gets a pair to check)."""
    return "\r\n".join(line for line in sdp.splitlines()
                       if not line.startswith("a=candidate:") and not line.startswith("a=end-of-candidates")) + "\r\n"


def ice_credentials(sdp: str) -> tuple[str | None, str | None]:
    ufrag = pwd = None
    for line in sdp.splitlines():
        if ufrag is None and line.startswith("a=ice-ufrag:"):
            ufrag = line.split(":", 1)[1].strip()
        elif pwd is None and line.startswith("a=ice-pwd:"):
            pwd = line.split(":", 1)[1].strip()
    return ufrag, pwd


# --------------------------------------------------------------------------------------------------------
# server peer


class ServerPeer:
    """One server-side RTCPeerConnection of a participant.

    ``role`` is the *client's* name for the PC: ``"publisher"`` (the client offers, we answer) or ``"subscriber"``
    (we offer, the client answers). In single-PC mode there is only the publisher PC and the server opens its own
    ``_reliable``/``_lossy`` data channels on it.
    """

    def __init__(self, *, name: str, role: str, on_state: Callable[[str], None],
                 on_message: Callable[[str, bytes], None], on_ice_restart: Callable[[str, str], None],
                 on_channel_open: Callable[[str], None] | None = None, strip_local_candidates: bool = False,
                 ignore_remote_candidates: bool | None = None) -> None:
        install_aioice_patches()
        self.name = name
        self.role = role
        self.strip_local_candidates = strip_local_candidates
        self.ignore_remote_candidates = (strip_local_candidates if ignore_remote_candidates is None
                                         else ignore_remote_candidates)
        # a server offer bundles everything on one transport, so media shares the data channels' ICE/DTLS
        bundle = RTCBundlePolicy.MAX_BUNDLE if role == "subscriber" else RTCBundlePolicy.BALANCED
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=bundle))
        self.mid_to_track_id: dict[str, str] = {}  # the media we send, by m-line
        self.channels: dict[str, Any] = {}  # server-created channels by label
        self.remote_channels: dict[str, Any] = {}  # client-created channels by label
        self._on_state = on_state
        self._on_message = on_message
        self._on_ice_restart = on_ice_restart
        self._on_channel_open = on_channel_open
        self._pending: list[dict[str, Any]] = []
        self._remote_ufrag: str | None = None
        self._lock = asyncio.Lock()
        self.closed = False
        self.state = "new"

        @self.pc.on("connectionstatechange")
        def _state() -> None:
            self.state = self.pc.connectionState
            self._on_state(self.pc.connectionState)

        @self.pc.on("datachannel")
        def _dc(channel) -> None:  # type: ignore[no-untyped-def]
            self.remote_channels[channel.label] = channel
            self._wire(channel)
            if self._on_channel_open is not None:
                self._on_channel_open(channel.label)

    def _wire(self, channel) -> None:  # type: ignore[no-untyped-def]
        label = channel.label

        @channel.on("open")
        def _open() -> None:
            if self._on_channel_open is not None:
                self._on_channel_open(label)

        @channel.on("message")
        def _msg(data) -> None:  # type: ignore[no-untyped-def]
            if isinstance(data, str):
                data = data.encode()
            self._on_message(label, data)

    def open_data_channels(self) -> None:
        """Create the server's downstream ``_reliable`` and ``_lossy`` channels (as livekit-server does)."""
        if "_reliable" not in self.channels:
            ch = self.pc.createDataChannel("_reliable", ordered=True)
            self.channels["_reliable"] = ch
            self._wire(ch)
        if "_lossy" not in self.channels:
            ch = self.pc.createDataChannel("_lossy", ordered=False, maxRetransmits=0)
            self.channels["_lossy"] = ch
            self._wire(ch)

    def downstream(self, label: str):  # type: ignore[no-untyped-def]
        """An open channel ``label`` to send on: ours if we opened one, else the client's."""
        for ch in (self.channels.get(label), self.remote_channels.get(label)):
            if ch is not None and ch.readyState == "open":
                return ch
        return None

    def _local_sdp(self) -> str:
        sdp = self.pc.localDescription.sdp
        return strip_candidates(sdp) if self.strip_local_candidates else sdp

    def _remote_sdp(self, sdp: str) -> str:
        # ice_never: candidates carried in the client's SDP (re-offers after gathering) are dropped too, or our
        # checks towards them would teach the client a peer-reflexive pair and ICE would complete anyway
        sdp = filter_remote_sdp(sdp)
        return strip_candidates(sdp) if self.ignore_remote_candidates else sdp

    def _ice_transports(self) -> list[Any]:
        out: dict[int, Any] = {}
        for t in self.pc.getTransceivers():
            ice = t.receiver.transport.transport
            out[id(ice)] = ice
        if self.pc.sctp is not None:
            ice = self.pc.sctp.transport.transport
            out[id(ice)] = ice
        return list(out.values())

    async def answer(self, offer_sdp: str, *, open_channels: bool = False,
                     send: list[tuple[str, Any]] = ()) -> tuple[str, list[str | None]]:
        """Apply a client offer (initial, renegotiation or ICE restart); return our answer SDP and, for each
        ``(stream id, track)`` in ``send``, the mid of the offered ``recvonly`` audio m-line it was placed on (None:
        no free m-line)."""
        async with self._lock:
            self._check_open()
            ufrag, pwd = ice_credentials(offer_sdp)
            restart = self._remote_ufrag is not None and ufrag is not None and ufrag != self._remote_ufrag
            await self.pc.setRemoteDescription(RTCSessionDescription(self._remote_sdp(offer_sdp), "offer"))
            if restart:
                self._apply_restart(ufrag, pwd)
            if ufrag is not None:
                self._remote_ufrag = ufrag
            if open_channels:
                self.open_data_channels()
            mids = [self._place(stream_id, track) for stream_id, track in send]
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            await self._flush_pending()
            return self._local_sdp(), mids

    def _place(self, stream_id: str, track: Any) -> str | None:
        """Send ``track`` on a free audio m-line the client offered to receive on."""
        for t in self.pc.getTransceivers():
            if (t.kind == track.kind and t.mid is not None and t.mid not in self.mid_to_track_id
                    and t._offerDirection == "sendonly" and t.sender.track is None):
                t.direction = "sendonly"
                t.sender.replaceTrack(track)
                t.sender._stream_id = stream_id  # aiortc has no public way to name the msid's stream
                self.mid_to_track_id[t.mid] = track.id
                return t.mid
        return None

    def _apply_restart(self, ufrag: str | None, pwd: str | None) -> None:
        old = self._remote_ufrag or ""
        for ice in self._ice_transports():
            conn = getattr(ice, "_connection", None)
            if conn is not None:
                conn.remote_username = ufrag
                conn.remote_password = pwd
        self._on_ice_restart(old, ufrag or "")

    async def offer(self, send: list[tuple[str, Any]] = ()) -> tuple[str, list[str | None]]:
        """Our offer (first or renegotiation), with a ``sendonly`` m-line for each ``(stream id, track)`` in
        ``send``; returns the SDP and those m-lines' mids."""
        async with self._lock:
            self._check_open()
            added = []
            for stream_id, track in send:  # first, so that the data channels bundle onto the media transport
                t = self.pc.addTransceiver(track, direction="sendonly")
                t.sender._stream_id = stream_id
                added.append(t)
            self.open_data_channels()
            await self.pc.setLocalDescription(await self.pc.createOffer())
            mids = [t.mid for t in added]
            for t in added:
                self.mid_to_track_id[t.mid] = t.sender.track.id
            return self._local_sdp(), mids

    async def set_answer(self, answer_sdp: str) -> None:
        async with self._lock:
            self._check_open()
            ufrag, pwd = ice_credentials(answer_sdp)
            await self.pc.setRemoteDescription(RTCSessionDescription(self._remote_sdp(answer_sdp), "answer"))
            if ufrag is not None:
                self._remote_ufrag = ufrag
            await self._flush_pending()

    def buffer_candidate(self, init: dict[str, Any]) -> None:
        """Keep a client candidate that was trickled before this peer existed; applied with the remote description."""
        self._pending.append(init)

    async def add_candidate(self, init: dict[str, Any]) -> str:
        """Add a trickled client candidate; returns what happened (added/buffered/ignored/dropped)."""
        if self.ignore_remote_candidates:
            return "ignored"
        if self.pc.remoteDescription is None:
            self._pending.append(init)
            return "buffered"
        return await self._add(init)

    async def _flush_pending(self) -> None:
        pending, self._pending = self._pending, []
        for init in pending:
            await self._add(init)

    async def _add(self, init: dict[str, Any]) -> str:
        cand = (init.get("candidate") or "").strip()
        if not cand:
            return "ignored"  # end-of-candidates: not signalled, so later ICE restarts still take candidates
        try:
            c = candidate_from_sdp(cand.split(":", 1)[1] if cand.startswith("candidate:") else cand)
        except Exception:  # malformed candidate line: ignore like a browser would
            return "ignored"
        if c.protocol.lower() != "udp" or not address_allowed(c.ip):
            return "dropped"
        c.sdpMid = init.get("sdpMid")
        c.sdpMLineIndex = init.get("sdpMLineIndex")
        try:
            await self.pc.addIceCandidate(c)
        except Exception as e:  # unknown mid etc.
            log.debug("addIceCandidate failed: %s", e)
            return "ignored"
        return "added"

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # wait for an offer/answer in flight: closing mid-gathering would let aioice open its sockets afterwards
        try:
            await asyncio.wait_for(self._lock.acquire(), 5)
            locked = True
        except asyncio.TimeoutError:  # pragma: no cover - a wedged negotiation; close anyway
            locked = False
        try:
            await asyncio.wait_for(self.pc.close(), 5)
        except (asyncio.TimeoutError, Exception) as e:  # pragma: no cover - best effort
            log.debug("pc close: %s", e)
        finally:
            if locked:
                self._lock.release()
        for ice in self._ice_transports():  # belt and braces: every aioice socket closed
            conn = getattr(ice, "_connection", None)
            if conn is not None and conn._protocols:
                try:
                    await asyncio.wait_for(conn.close(), 2)
                except (asyncio.TimeoutError, Exception) as e:  # pragma: no cover
                    log.debug("aioice close: %s", e)

    def _check_open(self) -> None:
        if self.closed:
            raise PeerClosed(self.name)


def parse_candidate_init(raw: str) -> dict[str, Any]:
    """``TrickleRequest.candidateInit`` is JSON ``{"candidate","sdpMid","sdpMLineIndex"}``."""
    d = json.loads(raw)
    if not isinstance(d, dict):
        raise ValueError("candidateInit is not an object")
    return d


def candidate_init_json(candidate: str, sdp_mid: str, sdp_mline_index: int) -> str:
    """All three fields are required: the client ``unwrap()``s its parse."""
    return json.dumps({"candidate": candidate, "sdpMid": sdp_mid, "sdpMLineIndex": sdp_mline_index})

"""Simulated callers: server-side participants of the double that publish a microphone track with a generated tone.

A caller has no signal connection and no peer connection of its own: it exists in the room's state, is announced to
the others like any participant (``ParticipantUpdate``, then a second one with its ``TrackInfo``; later joiners get it
in ``JoinResponse.other_participants``), and its track is delivered on each subscriber's own peer connection, as
livekit-server forwards media:

- v1 (single PC): the server never offers. A track present when the client offers is placed on one of the offer's
  ``recvonly`` audio m-lines (``sendonly`` in the answer, ``a=msid:<participant sid>|<track sid> <track sid>``) and
  named in the answer's ``mid_to_track_id``; for a track published later the server sends
  ``MediaSectionsRequirement{num_audios: 1}`` and the client offers again.
- v0 (dual PC, subscriber primary): the subscriber offer carries a ``sendonly`` audio m-line with the same msid; a
  track published later is a new subscriber offer.

Every subscriber gets its own tone track (aiortc pulls frames from each sender separately). Faults, keyed by
the caller's identity and taken when the caller is added: ``caller_no_publish``, ``caller_no_subscription``,
``caller_no_rtp``, ``caller_rtp_gap`` (see :data:`FAULTS`). Events: ``caller_joined``, ``caller_track_published``,
``caller_track_sent`` (the track is in a subscriber's SDP), ``caller_rtp_started`` / ``caller_rtp_withheld`` /
``caller_rtp_stopped`` / ``caller_rtp_resumed`` (per subscriber, ``to``), ``caller_left``.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from livekit.protocol import models, rtc

from ._core import new_sid

if TYPE_CHECKING:
    from ._signal import SignalService
    from ._signal_participant import SignalParticipant

FAULTS: dict[str, str] = {
    "caller_no_publish": "the simulated caller joins the room but never publishes its microphone",
    "caller_no_subscription": "the caller's track is announced (TrackInfo) but never negotiated to anyone: the "
                              "subscription never completes",
    "caller_no_rtp": "the caller's track is published and negotiated, but no RTP is ever sent",
    "caller_rtp_gap": "the caller's RTP stops `after` seconds after it started and resumes `gap` seconds later "
                      "(`gap` None: never resumes)",
}

RATE = 48000
FRAME = 960  # 20 ms


def _tone_track_class() -> type:
    """The tone track class, built on first use (aiortc's media stack is imported only when a caller is added)."""
    from aiortc.mediastreams import MediaStreamTrack

    class _ToneTrack(MediaStreamTrack):  # type: ignore[misc]
        """An aiortc audio track sending a sine tone in real time (20 ms frames), with the caller's RTP faults."""

        kind = "audio"

        def __init__(self, caller: Caller, emit: Callable[..., None]) -> None:
            super().__init__()
            self._id = caller.track_sid  # aiortc puts track.id in the msid's second half
            self.caller = caller  # its tone and RTP faults
            self._emit = emit
            self._start: float | None = None
            self._pts = 0
            self._gapped = False

        async def recv(self) -> Any:
            import av
            import numpy as np
            from aiortc.mediastreams import MediaStreamError

            if self.readyState != "live":
                raise MediaStreamError
            caller = self.caller
            if self._start is None:
                self._start = time.monotonic()
                if caller.no_rtp:
                    self._emit("caller_rtp_withheld")
                    await asyncio.Event().wait()  # until the sender stops (cancelled)
                self._emit("caller_rtp_started")
            if caller.gap_after is not None and not self._gapped and self._pts >= caller.gap_after * RATE:
                self._gapped = True
                self._emit("caller_rtp_stopped", gap=caller.gap)
                if caller.gap is None:
                    await asyncio.Event().wait()
                await asyncio.sleep(caller.gap)
                self._pts += int(caller.gap * RATE) // FRAME * FRAME
                self._emit("caller_rtp_resumed")
            wait = self._start + self._pts / RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            n = np.arange(self._pts, self._pts + FRAME)
            samples = (caller.amplitude * 32767 * np.sin(2 * math.pi * caller.hz * n / RATE)).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = RATE
            frame.pts = self._pts
            frame.time_base = fractions.Fraction(1, RATE)
            self._pts += FRAME
            return frame

    return _ToneTrack


_track_cls: type | None = None


def new_tone_track(caller: Caller, emit: Callable[..., None]) -> Any:
    global _track_cls
    if _track_cls is None:
        _track_cls = _tone_track_class()
    return _track_cls(caller, emit)


@dataclass(eq=False)
class Caller:
    """A simulated caller in one room (``SignalService.callers``)."""

    identity: str
    sid: str
    room: str
    hz: float
    amplitude: float
    kind: str = "standard"
    track_sid: str | None = None  # set once published
    deliver: bool = True  # False: caller_no_subscription
    no_rtp: bool = False
    gap_after: float | None = None
    gap: float | None = None
    joined_at: float = field(default_factory=time.time)
    delivered_to: set[str] = field(default_factory=set)  # subscriber sids that have the track in their SDP

    @property
    def stream_id(self) -> str:
        return f"{self.sid}|{self.track_sid}"

    def info(self, state: int = models.ParticipantInfo.ACTIVE) -> models.ParticipantInfo:
        tracks = []
        if self.track_sid is not None:
            tracks.append(models.TrackInfo(sid=self.track_sid, type=models.AUDIO, name="microphone",
                                           source=models.TrackSource.MICROPHONE, mime_type="audio/opus"))
        kind = models.ParticipantInfo.SIP if self.kind == "sip" else models.ParticipantInfo.STANDARD
        return models.ParticipantInfo(sid=self.sid, identity=self.identity, name=self.identity, state=state,
                                      joined_at=int(self.joined_at), joined_at_ms=int(self.joined_at * 1000),
                                      tracks=tracks, kind=kind,
                                      permission=models.ParticipantPermission(can_subscribe=True, can_publish=True))


# ------------------------------------------------------------------------------------------------ the service side


def room_callers(svc: SignalService, room: str) -> list[Caller]:
    return list(svc.callers.get(room, ()))


def caller_infos(svc: SignalService, room: str) -> list[models.ParticipantInfo]:
    return [c.info() for c in room_callers(svc, room)]


def pending_tracks(svc: SignalService, p: SignalParticipant) -> list[tuple[Caller, Any]]:
    """The caller tracks ``p`` should receive but does not have in its SDP yet, each with a new tone track."""
    out = []
    for caller in pending_callers(svc, p):

        def emit(kind: str, _caller: Caller = caller, **data: Any) -> None:
            svc.record(kind, identity=_caller.identity, track=_caller.track_sid, to=p.identity, **data)

        track = new_tone_track(caller, emit)
        out.append((caller, track))
    return out


def delivered(svc: SignalService, p: SignalParticipant, placed: list[tuple[Caller, str]], pc: str) -> None:
    """Record that ``placed`` ((caller, mid) pairs) are now in ``p``'s SDP."""
    for caller, mid in placed:
        caller.delivered_to.add(p.sid)
        svc.record("caller_track_sent", identity=caller.identity, track=caller.track_sid, to=p.identity,
                   to_sid=p.sid, mid=mid, pc=pc)


async def add_caller(svc: SignalService, room: str, identity: str = "caller", *, hz: float = 440.0,
                     amplitude: float = 0.3, kind: str = "standard", publish_after: float = 0.0) -> Caller:
    """Add a simulated caller to ``room`` (created if needed): it joins, then publishes its microphone
    (``publish_after`` seconds later) unless ``caller_no_publish`` is set for it. Run on the double's loop."""
    r = svc.double.ensure_room(room, created_by="join")
    caller = Caller(identity=identity, sid=new_sid("PA_"), room=r.name, hz=hz, amplitude=amplitude, kind=kind)
    caller.deliver = svc.take("caller_no_subscription", identity) is None
    caller.no_rtp = svc.take("caller_no_rtp", identity) is not None
    f = svc.take("caller_rtp_gap", identity)
    if f is not None:
        caller.gap_after = float(f.params.get("after", 1.0))
        gap = f.params.get("gap", 5.0)
        caller.gap = None if gap is None else float(gap)
    publishes = svc.take("caller_no_publish", identity) is None
    svc.callers.setdefault(r.name, []).append(caller)
    svc.record("caller_joined", identity=identity, sid=caller.sid, room=r.name)
    await _announce(svc, caller)
    if publishes:
        if publish_after > 0:
            svc.spawn(_publish_later(svc, caller, publish_after))
        else:
            await publish(svc, caller)
    return caller


async def _publish_later(svc: SignalService, caller: Caller, delay: float) -> None:
    await asyncio.sleep(delay)
    await publish(svc, caller)


async def publish(svc: SignalService, caller: Caller) -> None:
    """Publish the caller's microphone: announce its TrackInfo, then negotiate it to every subscriber."""
    if caller.track_sid is not None:
        return
    caller.track_sid = new_sid("TR_")
    svc.record("caller_track_published", identity=caller.identity, sid=caller.sid, track=caller.track_sid,
               room=caller.room, delivered=caller.deliver)
    await _announce(svc, caller)
    if not caller.deliver:
        return
    for p in _subscribers(svc, caller.room):
        await offer_pending(svc, p)


async def remove_caller(svc: SignalService, room: str, identity: str = "caller") -> None:
    """The caller leaves (the others get a DISCONNECTED update)."""
    callers = svc.callers.get(room, [])
    for caller in [c for c in callers if c.identity == identity]:
        callers.remove(caller)
        svc.record("caller_left", identity=identity, sid=caller.sid, room=room)
        await _announce(svc, caller, models.ParticipantInfo.DISCONNECTED)


def _subscribers(svc: SignalService, room: str) -> list[SignalParticipant]:
    return [p for p in svc.participants.values() if p.room.name == room and not p.closed]


async def _announce(svc: SignalService, caller: Caller, state: int = models.ParticipantInfo.ACTIVE) -> None:
    upd = rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[caller.info(state)]))
    for p in _subscribers(svc, caller.room):
        if p.conn is not None:
            await p.conn.send(upd)


async def offer_pending(svc: SignalService, p: SignalParticipant) -> None:
    """Get the caller tracks ``p`` lacks into its SDP: v1 asks the client to offer again, v0 re-offers the
    subscriber PC."""
    n = len(pending_callers(svc, p))
    if p.conn is None or not n:
        return
    if p.single_pc:
        await p.conn.send(rtc.SignalResponse(media_sections_requirement=rtc.MediaSectionsRequirement(num_audios=n)))
        svc.record("media_sections_requirement_sent", identity=p.identity, sid=p.sid, num_audios=n)
    elif p.subscriber_primary:
        await svc.sessions.reoffer_subscriber(p)


def pending_callers(svc: SignalService, p: SignalParticipant) -> list[Caller]:
    return [c for c in room_callers(svc, p.room.name)
            if c.track_sid is not None and c.deliver and p.sid not in c.delivered_to]


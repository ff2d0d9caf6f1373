"""Media after the connect: is the agent hearing the caller, and is it sending audio?

Once ``Room.connect`` succeeded, a :class:`MediaWatch` follows the room (the room patch starts it):

- ``media.participant_wait``: until the first remote participant is in the room;
- ``media.track_wait``: from then until the first remote audio track is published;
- ``media.subscribe``: the first remote audio track, from published to subscribed (track sid and source);
- ``media.first_audio``: from that subscription to the first inbound RTP packet;
- ``media.silence``: a subscribed audio track whose inbound RTP stops (or never starts) for longer than the phase's
  budget while the room is connected, opened back-dated to the last packet (so the watchdog exports its stall record
  at once, while the silence lasts) and ended when packets come again;
- ``media.publish``: the agent's own first audio track, from published to the first RTP packet sent;
- the time from a recovered reconnect episode to inbound audio flowing again, on the episode (its end is held).

Whether RTP arrives is read from the track's own receiver stats (``track.get_stats()``: packets received / sent),
polled a few times a second by one task per room: nothing is done per audio frame, and ``rtc.AudioStream`` frames
would prove nothing anyway (the SDK yields silence when no RTP comes). ``session.start`` times livekit-agents'
``AgentSession.start`` and records an exception raised inside it.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
import weakref
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context

from .. import _catalogue as c
from .. import _scope
from .._errors import guard, warn_once
from .._patching import wrap
from .._recorder import Recorder, holds

SESSION_MOD = "livekit.agents.voice.agent_session"

POLL_FIRST = 0.05  # s between stats reads while a first packet is awaited
POLL = 0.2  # s between stats reads otherwise
FAST_FOR = 3.0  # s after a subscription (or the agent's publish) during which a first packet is read for often
PACKET_S = 0.02  # an Opus packet's duration (20 ms frames), to place the end of a silence between two reads
AUDIO_AFTER_MAX = 10.0  # s after a recovered episode that its end is held for inbound audio
MAX_TRACKS = 8  # inbound audio tracks watched per room
STATS_TIMEOUT = 1.0
UNREAD = -1  # a stats read that timed out: nothing is known of this poll (never taken for a silence)

K_WAIT = ("media", "participant_wait")
K_TRACK = ("media", "track_wait")
K_SUBSCRIBE = ("media", "subscribe")
K_FIRST = ("media", "first_audio")
K_PUBLISH = ("media", "publish")


def _silence_key(track_sid: str) -> tuple[str, str, str]:
    return ("media", "silence", track_sid)


def _name(enum_value: Any, prefix: str) -> str:
    """``TrackSource.SOURCE_MICROPHONE`` → ``microphone`` (protobuf enums by name, whatever the SDK version)."""
    try:
        from livekit.rtc._proto import participant_pb2, track_pb2

        for enum in (track_pb2.TrackSource, participant_pb2.ParticipantKind):
            try:
                name = enum.Name(int(enum_value))
            except ValueError:
                continue
            if name.startswith(prefix):
                return name[len(prefix):].lower()
    except Exception:  # noqa: BLE001
        pass
    return str(enum_value)


def _is_audio(track_or_pub: Any) -> bool:
    try:
        from livekit import rtc

        return int(track_or_pub.kind) == int(rtc.TrackKind.KIND_AUDIO)
    except Exception:  # noqa: BLE001
        return False


def _connected(room: Any) -> bool:
    try:
        from livekit import rtc

        return int(room.connection_state) == int(rtc.ConnectionState.CONN_CONNECTED)
    except Exception:  # noqa: BLE001
        return False


def _packets(stats: Any, kind: str) -> int | None:
    """Packets received (``inbound_rtp``) or sent (``outbound_rtp``) in a track's stats; None if it has none yet."""
    total = None
    for s in stats:
        if s.WhichOneof("stats") != kind:
            continue
        n = s.inbound_rtp.received.packets_received if kind == "inbound_rtp" else s.outbound_rtp.sent.packets_sent
        total = (total or 0) + int(n)
    return total


STATS_SINCE = (1, 1, 21)


@functools.lru_cache(maxsize=1)
def _rtc_version() -> tuple[int, ...]:
    try:
        from livekit.rtc import __version__

        return tuple(int(x) for x in re.findall(r"\d+", __version__)[:3])
    except Exception:  # noqa: BLE001
        return (0,)


def stats_readable() -> bool:
    """Whether a track's RTP stats can be read safely. livekit 1.1.2's FFI can abort the whole process reading a
    remote track's stats (a Rust panic in its rtp_receiver parsing the stats JSON: "invalid number", seen with a
    subscribed track that had no RTP); 1.1.21 is the first version seen to read them safely. Without them, first
    audio, silences and the first packet sent are not traced (said once)."""
    ok = _rtc_version() >= STATS_SINCE
    if not ok:
        warn_once("media-stats", "lk_probe: livekit %s cannot read a track's RTP stats safely; first audio, "
                  "silences and the agent's first sent audio are not traced (livekit %s or later)",
                  ".".join(map(str, _rtc_version())), ".".join(map(str, STATS_SINCE)))
    return ok


@dataclass(eq=False)
class _Inbound:
    track: Any
    pub: Any  # its publication: a muted track sends nothing and that is no silence
    sid: str
    source: str
    first: bool  # the room's first remote audio track (its phases: media.subscribe, media.first_audio)
    last_mono: float  # when packets last increased (or the subscription)
    last_ns: int
    packets: int = 0
    got_first: bool = False
    silent: bool = False


class MediaWatch:
    """The media phases of one connected room. Owned by the job (closed at its end) or ended with the room."""

    def __init__(self, room: Any, room_rec: Recorder) -> None:
        self._room = weakref.ref(room)
        # a recorder of its own, so that the room's events (a Leave, a watchdog line while simply connected) do not
        # land on a long-open media phase; the room's recorder is where reconnect episodes are found
        self.rec = Recorder(room_rec.default_parent, attributes=room_rec.attributes, label=room_rec.label)
        self.room_rec = room_rec
        self.inbound: dict[str, _Inbound] = {}
        self.first_track_sid: str | None = None
        self.local: Any = None  # the first local audio track while its first packet is awaited
        self.local_sid = ""
        self.local_since = 0.0
        self.closed = False
        self._task: asyncio.Task[Any] | None = None
        self._held: Any = None  # a reconnect episode whose end waits for inbound audio
        self._reconnected: tuple[float, int, int] | None = None  # (mono, ns, packets) at the `reconnected` event

    # ------------------------------------------------------------------ room events
    def start(self, room: Any) -> None:
        t = time.time_ns()
        others = list(room.remote_participants.values())
        self.rec.start("media.participant_wait", K_WAIT, t=t)
        if others:
            self._participant(others[0], t, present=True)
        for p in others:
            for pub in list(p.track_publications.values()):
                if not _is_audio(pub):
                    continue
                self._published(pub, p, t, present=True)
                if pub.track is not None and getattr(pub, "subscribed", True):
                    self._subscribed(pub.track, pub, p)
        handlers = {"participant_connected": lambda p: self._participant(p, time.time_ns()),
                    "track_published": lambda pub, p: self._published(pub, p, time.time_ns()),
                    "track_subscribed": lambda track, pub, p: self._subscribed(track, pub, p),
                    "track_unsubscribed": lambda track, pub, p: self._unsubscribed(track),
                    "local_track_published": lambda pub, track: self._local_published(pub, track),
                    "reconnected": lambda *_: self._on_reconnected(),
                    "disconnected": lambda *_: self.close(error_type="disconnected",
                                                          error_message="the room disconnected")}
        for name, fn in handlers.items():
            room.on(name, self._guarded(fn))

    def _guarded(self, fn: Any) -> Any:
        def on_event(*args: Any) -> None:
            if self.closed:
                return
            with guard("media.event"):
                fn(*args)
        return on_event

    def _participant(self, p: Any, t: int, present: bool = False) -> None:
        if self.rec.is_open(K_WAIT):
            self.rec.end(K_WAIT, t=t, attributes={c.MEDIA_PARTICIPANT_SID: p.sid, c.MEDIA_PRESENT_AT_CONNECT: present,
                                                  c.MEDIA_PARTICIPANT_KIND: _name(getattr(p, "kind", ""),
                                                                                  "PARTICIPANT_KIND_")})
            if self.first_track_sid is None:
                self.rec.start("media.track_wait", K_TRACK, t=t, attributes={c.MEDIA_PARTICIPANT_SID: p.sid})

    def _published(self, pub: Any, p: Any, t: int, present: bool = False) -> None:
        if self.first_track_sid is not None or not _is_audio(pub):
            return
        self._participant(p, t, present=present)
        self.first_track_sid = pub.sid
        self.rec.end(K_TRACK, t=t, attributes={c.MEDIA_TRACK_SID: pub.sid, c.MEDIA_PRESENT_AT_CONNECT: present})
        self.rec.start("media.subscribe", K_SUBSCRIBE, t=t, attributes={
            c.MEDIA_TRACK_SID: pub.sid, c.MEDIA_TRACK_SOURCE: _name(pub.source, "SOURCE_"),
            c.MEDIA_PARTICIPANT_SID: p.sid, c.MEDIA_PRESENT_AT_CONNECT: present})

    def _subscribed(self, track: Any, pub: Any, p: Any) -> None:
        if not _is_audio(track) or track.sid in self.inbound or len(self.inbound) >= MAX_TRACKS:
            return
        t = time.time_ns()
        self._published(pub, p, t)
        first = track.sid == self.first_track_sid and not self.rec.is_open(K_FIRST) and self.rec.is_open(K_SUBSCRIBE)
        source = _name(pub.source, "SOURCE_")
        if first:
            self.rec.end(K_SUBSCRIBE, t=t)
        if not stats_readable():
            return
        if first:
            self.rec.start("media.first_audio", K_FIRST, t=t, attributes={c.MEDIA_TRACK_SID: track.sid,
                                                                          c.MEDIA_TRACK_SOURCE: source})
        self.inbound[track.sid] = _Inbound(track, pub, track.sid, source, first, time.monotonic(), t)
        self._ensure_task()

    def _unsubscribed(self, track: Any) -> None:
        inb = self.inbound.pop(getattr(track, "sid", ""), None)
        if inb is None:
            return
        if inb.silent:
            self.rec.end(_silence_key(inb.sid), attributes={c.OUTCOME: "unsubscribed", c.MEDIA_PACKETS: inb.packets})
        if inb.first and self.rec.is_open(K_FIRST):
            self.rec.end(K_FIRST, attributes={c.OUTCOME: "unsubscribed", c.MEDIA_PACKETS: inb.packets})

    def _local_published(self, pub: Any, track: Any) -> None:
        if self.local_sid or not _is_audio(track) or not stats_readable():
            return
        self.local, self.local_sid, self.local_since = track, pub.sid, time.monotonic()
        self.rec.start("media.publish", K_PUBLISH, attributes={c.MEDIA_TRACK_SID: pub.sid,
                                                               c.MEDIA_TRACK_SOURCE: _name(pub.source, "SOURCE_")})
        self._ensure_task()

    def _on_reconnected(self) -> None:
        if self._held is not None:
            self._reconnected = (time.monotonic(), time.time_ns(), sum(i.packets for i in self.inbound.values()))

    # ------------------------------------------------------------------ the stats poll
    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="lk_probe-media")

    async def _run(self) -> None:
        while not self.closed:
            # read often only in the first seconds of waiting for a first packet (not forever for a silent track)
            soon = time.monotonic() - FAST_FOR
            waiting = (self.local is not None and self.local_since > soon) or any(
                not i.got_first and i.last_mono > soon for i in self.inbound.values())
            await asyncio.sleep(POLL_FIRST if waiting else POLL)
            with guard("media.poll"):
                await self._poll()

    async def _poll(self) -> None:
        room = self._room()
        if room is None or self.closed:
            self.closed = True
            return
        connected = _connected(room)
        for inb in list(self.inbound.values()):
            n = await self._read(inb.track, "inbound_rtp")
            if self.closed:
                return
            if n is None:  # the track is gone (unsubscribed, the room left): its open phases end with it
                self._unsubscribed(inb.track)
                continue
            if n != UNREAD:
                self._inbound(inb, n, connected)
        if self.local is not None:
            n = await self._read(self.local, "outbound_rtp")
            if n == UNREAD:
                n = 0
            if n:
                self.rec.end(K_PUBLISH, attributes={c.MEDIA_PACKETS: n})
            if n is None or n:
                self.local = None
        self._episode(connected)

    @staticmethod
    async def _read(track: Any, kind: str) -> int | None:
        """Packets received or sent so far (0 before the first); None when the track's stats cannot be read (its
        handle was released: the track or the room is gone); UNREAD when the read timed out (a busy FFI or loop)."""
        try:
            stats = await asyncio.wait_for(track.get_stats(), STATS_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except asyncio.TimeoutError:
            return UNREAD
        except Exception:  # noqa: BLE001 - livekit raises bare Exception / AssertionError for a released handle
            return None
        return _packets(stats, kind) or 0

    def _inbound(self, inb: _Inbound, n: int, connected: bool) -> None:
        now_mono, now_ns = time.monotonic(), time.time_ns()
        if n > inb.packets:
            if inb.first and not inb.got_first:
                self.rec.end(K_FIRST, t=now_ns, attributes={c.MEDIA_PACKETS: n})
            inb.got_first = True
            if inb.silent:  # the first packets back came (n - packets) × 20 ms ago, but not before the last read
                back = min((n - inb.packets) * PACKET_S, POLL)
                self.rec.end(_silence_key(inb.sid), t=now_ns - int(back * 1e9),
                             attributes={c.OUTCOME: "resumed", c.MEDIA_PACKETS: n})
                inb.silent = False
            inb.packets, inb.last_mono, inb.last_ns = n, now_mono, now_ns
            return
        if getattr(inb.pub, "muted", False):  # the caller muted: nothing is sent, the silence budget starts at unmute
            inb.last_mono, inb.last_ns = now_mono, now_ns
            return
        budget = c.budget("media.silence")
        if inb.silent or not connected or budget is None or now_mono - inb.last_mono < budget:
            return
        # the last packet came between the read that last saw the count grow and the next one: half a poll later
        start = inb.last_ns + (int(POLL / 2 * 1e9) if inb.got_first else 0)
        inb.silent = True
        self.rec.start("media.silence", _silence_key(inb.sid), t=min(start, now_ns), attributes={
            c.MEDIA_TRACK_SID: inb.sid, c.MEDIA_TRACK_SOURCE: inb.source, c.MEDIA_PACKETS: n})

    def _episode(self, connected: bool) -> None:
        """Hold an open reconnect episode's end; once recovered, put on it when inbound audio flowed again."""
        if self._held is None:
            if not self.inbound:
                return
            for key, phase, _ in self.room_rec.open_phases():
                if phase == "rtc.reconnect":
                    self._held = self.room_rec.span(key)
                    holds.hold(self._held, 120.0)
                    break
            return
        if self._reconnected is None or not connected:
            return
        mono, ns, before = self._reconnected
        if sum(i.packets for i in self.inbound.values()) > before:
            holds.release(self._held, {c.MEDIA_AUDIO_AFTER: round(max(time.time_ns() - ns, 0) / 1e9, 3)})
        elif time.monotonic() - mono < AUDIO_AFTER_MAX:
            return
        else:
            holds.release(self._held)
        self._held = self._reconnected = None

    # ------------------------------------------------------------------ the end
    def close(self, *, error_type: str, error_message: str) -> None:
        """The room or the job ended: silences end (outcome disconnected), phases still waiting end with
        ``error_type``."""
        if self.closed:
            return
        self.closed = True
        t = time.time_ns()
        for inb in self.inbound.values():
            if inb.silent:
                self.rec.end(_silence_key(inb.sid), t=t, attributes={c.OUTCOME: "disconnected",
                                                                     c.MEDIA_PACKETS: inb.packets})
        # an agent that never spoke sent nothing: that is no failure
        self.rec.end(K_PUBLISH, t=t, attributes={c.OUTCOME: "nothing_sent"})
        for key in (K_WAIT, K_TRACK, K_SUBSCRIBE, K_FIRST):
            self.rec.end(key, t=t, error_type=error_type, error_message=error_message)
        if self._held is not None:
            holds.release(self._held)
            self._held = None
        task = self._task
        if task is not None and not task.done():
            try:
                current = asyncio.current_task()
            except RuntimeError:  # no loop in this thread (uninstall() from plain code or another thread)
                current = None
            if task is not current:
                try:
                    task.get_loop().call_soon_threadsafe(task.cancel)
                except RuntimeError:  # its loop is closed: the task went with it
                    pass


_watches: "weakref.WeakKeyDictionary[Any, MediaWatch]" = weakref.WeakKeyDictionary()


def close_all() -> None:
    """At uninstall: every room's media phases end (nothing keeps running or stalling after lk_probe is gone)."""
    for w in list(_watches.values()):
        with guard("media.close_all"):
            w.close(error_type="uninstrumented", error_message="lk_probe was uninstalled")
    _watches.clear()


def watch(room: Any, rec: Recorder) -> MediaWatch:
    """Start the media phases of a room whose connect just succeeded (a second connect replaces the first's)."""
    old = _watches.get(room)
    if old is not None:
        old.close(error_type=c.ERR_INCOMPLETE, error_message="the room connected again")
    w = MediaWatch(room, rec)
    _watches[room] = w
    job = _scope.current.get()
    if job is not None:
        job.own(w, first=True)  # the job's end closes what is still open
    w.start(room)
    return w


# ------------------------------------------------------------------------------------------------ AgentSession.start


async def _session_start(wrapped, instance, args, kwargs):
    key = None
    rec = None
    with guard("media.session_start"):
        job = _scope.current.get()
        rec = job.recorder if job is not None else None
        if rec is not None:
            key = ("session.start", id(instance))
            rec.start("session.start", key, context=otel_context.get_current())
    try:
        result = await wrapped(*args, **kwargs)
    except BaseException as e:
        with guard("media.session_start_failed"):
            if rec is not None and key is not None:
                etype = c.ERR_CANCELLED if isinstance(e, asyncio.CancelledError) else type(e).__name__
                rec.end(key, error_type=etype, error_message=str(e) or etype)
        raise
    with guard("media.session_started"):
        if rec is not None and key is not None:
            rec.end(key)
    return result


def instrument() -> None:
    wrap(SESSION_MOD, "AgentSession.start", _session_start, required=False)

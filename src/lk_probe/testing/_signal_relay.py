"""Data relay of the double: a ``DataPacket`` one participant sends on a data channel goes to the other participants
of its room (or only to its ``destination_identities``), like livekit-server forwards it.

The sender's identity and sid are stamped into the packet; the highest reliable sequence number is kept for the
ReconnectResponse of a resume. A packet for a participant whose downstream channel is not open yet (it opens a moment
after the PC connects) is queued (up to 256) and flushed when a channel opens. Every packet is an event:
``data_relayed``, ``data_queued`` or ``data_dropped``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError
from livekit.protocol import models

from ._signal_participant import SignalParticipant

if TYPE_CHECKING:
    from ._signal import SignalService

MAX_QUEUED = 256  # packets per participant waiting for a downstream channel


class DataRelay:
    def __init__(self, svc: SignalService) -> None:
        self.svc = svc

    def relay(self, p: SignalParticipant, label: str, data: bytes) -> None:
        """``data`` arrived from ``p`` on the channel ``label``: forward it."""
        pkt = models.DataPacket()
        try:
            pkt.ParseFromString(data)
            parsed = True
        except DecodeError:
            parsed = False
        dest: set[str] = set()
        if parsed:
            if label == "_reliable" and pkt.sequence:
                p.last_seq = max(p.last_seq, pkt.sequence)
            pkt.participant_identity = p.identity
            pkt.participant_sid = p.sid
            if pkt.HasField("user"):
                pkt.user.participant_identity = p.identity
                pkt.user.participant_sid = p.sid
                dest.update(pkt.user.destination_identities)
            dest.update(pkt.destination_identities)
            out = pkt.SerializeToString()
        else:
            out = data
        what = pkt.WhichOneof("value") if parsed else None
        for q in self.svc.others(p):
            if dest and q.identity not in dest:
                continue
            self._deliver(q, label, out, sender=p.identity, packet=what)

    def flush(self, q: SignalParticipant) -> None:
        """Send what waits for ``q`` on the channels that are open now."""
        pending, q.pending_data = q.pending_data, []
        for label, out, sender, packet in pending:
            if q.downstream(label) is None:
                q.pending_data.append((label, out, sender, packet))
            else:
                self._deliver(q, label, out, sender=sender, packet=packet)

    def _deliver(self, q: SignalParticipant, label: str, out: bytes, *, sender: str, packet: str | None) -> None:
        record = self.svc.record
        ch = q.downstream(label)
        if ch is None:
            if len(q.pending_data) < MAX_QUEUED:
                q.pending_data.append((label, out, sender, packet))
                record("data_queued", sender=sender, to=q.identity, label=label, size=len(out))
            else:
                record("data_dropped", sender=sender, to=q.identity, label=label, size=len(out),
                       reason="no open downstream channel, queue full")
            return
        try:
            ch.send(out)
        except Exception as e:  # channel closing under us
            record("data_dropped", sender=sender, to=q.identity, label=label, size=len(out), reason=repr(e))
            return
        record("data_relayed", sender=sender, to=q.identity, label=label, size=len(out), packet=packet)

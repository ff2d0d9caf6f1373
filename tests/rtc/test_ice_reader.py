"""The ICE pair reader on real protobuf messages, and the span hold on a real SDK provider."""

from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.rtc]


def _stats(pc_items: dict[str, list]):
    from livekit.rtc import room as rtc_room
    from livekit.rtc._proto import stats_pb2 as pb

    def item(kind: str, id_: str, **fields):
        s = pb.RtcStats()
        wrapper = getattr(s, kind)
        wrapper.rtc.id = id_
        inner = getattr(wrapper, "candidate" if kind.endswith("_candidate") else kind)
        for k, v in fields.items():
            setattr(inner, k, v)
        return s

    out = {pc: [item(*spec[:2], **spec[2]) for spec in specs] for pc, specs in pc_items.items()}
    return rtc_room.RtcStats(publisher_stats=out.get("publisher", []), subscriber_stats=out.get("subscriber", []))


def test_reader_takes_the_transport_selected_pair_and_flags_a_relay():
    from livekit.rtc._proto import stats_pb2 as pb

    from lk_probe._patches.room import ice_pair_attributes

    stats = _stats({"subscriber": [
        ("transport", "T1", {"selected_candidate_pair_id": "CP2"}),
        ("candidate_pair", "CP1", {"local_candidate_id": "L1", "remote_candidate_id": "R1", "nominated": True,
                                   "state": pb.PAIR_SUCCEEDED, "current_round_trip_time": 0.5}),
        ("candidate_pair", "CP2", {"local_candidate_id": "L2", "remote_candidate_id": "R1",
                                   "current_round_trip_time": 0.0421}),
        ("local_candidate", "L1", {"candidate_type": pb.HOST, "protocol": "udp", "address": "10.0.0.7"}),
        ("local_candidate", "L2", {"candidate_type": pb.RELAY, "protocol": "tcp", "address": "203.0.113.9"}),
        ("remote_candidate", "R1", {"candidate_type": pb.SRFLX, "protocol": "tcp", "address": "198.51.100.4"}),
    ]})
    assert ice_pair_attributes(stats) == {
        "lk_probe.ice.subscriber.local_candidate_type": "relay",
        "lk_probe.ice.subscriber.remote_candidate_type": "srflx",
        "lk_probe.ice.subscriber.protocol": "tcp",
        "lk_probe.ice.subscriber.relayed": True,
        "lk_probe.ice.subscriber.rtt_ms": 42.1,
    }
    # no TURN server or ICE-TCP runs here, so no real connect selects such a pair: the reader's attributes on a
    # connect span are what the relayed_ice_path finding reads
    from lk_probe.findings import diagnose
    from lk_probe.spans import SpanRecord

    connect = SpanRecord("rtc.connect", "1" * 32, "2" * 16, start_ns=1, end_ns=2,
                         attributes={"lk_probe.phase": "rtc.connect", **ice_pair_attributes(stats)})
    (finding,) = diagnose([connect])
    assert (finding.code, finding.span_id) == ("relayed_ice_path", connect.span_id)
    assert finding.evidence == "the subscriber PC's selected ICE pair is relayed (TURN) and over TCP: relay→srflx/tcp"


def test_reader_falls_back_to_the_nominated_pair_and_ignores_dangling_ids():
    from livekit.rtc._proto import stats_pb2 as pb

    from lk_probe._patches.room import ice_pair_attributes

    stats = _stats({"publisher": [
        ("candidate_pair", "CP1", {"local_candidate_id": "L1", "remote_candidate_id": "R1", "nominated": True,
                                   "state": pb.PAIR_SUCCEEDED}),
        ("local_candidate", "L1", {"candidate_type": pb.PRFLX, "protocol": "udp"}),
        ("remote_candidate", "R1", {"candidate_type": pb.HOST, "protocol": "udp"}),
    ], "subscriber": [
        ("transport", "T1", {"selected_candidate_pair_id": "CP9"}),  # names a pair the report does not hold
        ("candidate_pair", "CP3", {"local_candidate_id": "L3", "remote_candidate_id": "R3"}),  # neither selected
    ]})
    attrs = ice_pair_attributes(stats)
    assert attrs["lk_probe.ice.publisher.local_candidate_type"] == "prflx"
    assert attrs["lk_probe.ice.publisher.relayed"] is False
    assert not [k for k in attrs if ".subscriber." in k]
    assert ice_pair_attributes(_stats({})) == {}


def test_a_held_end_keeps_its_time_and_gets_the_late_attributes():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from lk_probe._recorder import HoldableSpan, holds

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    span = HoldableSpan(tracer.start_span("room_connect", start_time=1_000))
    holds.hold(span, 5.0)
    span.end(end_time=2_000)  # what the owner (livekit-agents) does
    assert exporter.get_finished_spans() == ()  # held, not exported yet
    holds.release(span, {"lk_probe.ice.publisher.protocol": "udp"})
    (done,) = exporter.get_finished_spans()
    assert done.end_time == 2_000 and done.attributes["lk_probe.ice.publisher.protocol"] == "udp"

    late = tracer.start_span("job.connect", start_time=1_000)
    holds.hold(late, 0.0)
    holds.end(late, 3_000)
    holds.expire(time.monotonic() + 1)  # the watchdog's sweep: nobody released it in time
    assert [s.end_time for s in exporter.get_finished_spans()] == [2_000, 3_000]
    holds.release(late, {"x": 1})  # a release after the expiry changes nothing and never raises
    assert len(holds) == 0

"""Hypothesis: arbitrary records and room events never raise out of records+machine, and memory stays bounded.

10,000+ examples per property when ``CI`` is set (fewer locally)."""

from __future__ import annotations

import os
import tracemalloc

from hypothesis import HealthCheck, given, settings, strategies as st

from lk_probe import _errors
from lk_probe._rust.machine import MAX_OPEN, MAX_PRE_EVENTS, EngineMachine
from lk_probe._rust.records import TABLES, parse
from lk_probe._sink import ListSink

CI = bool(os.environ.get("CI"))
EXAMPLES = 10_000 if CI else 400

TARGETS = sorted({t for table in TABLES.values() for t in table}) + ["libwebrtc", "reqwest::connect", "", "livekit"]
PREFIXES = sorted({p for table in TABLES.values() for pats in table.values() for p, _, _ in pats if p})
SAMPLES = [
    'Timeout("transport timed out")', "v1 path: Handshake { status: 404 }", "0", "1", "10", "-1", "99999999999999",
    '"server request to leave" Migration Resume', '"x" A B', "Connecting Subscriber", "Connected Publisher",
    "Failed Subscriber", "Subscriber pc state failed", "Publisher pc state failed", "path=v1, single_pc_mode=true",
    'Signal(RegionError("region fetch timed out")), retrying... (1/3)', "x, retrying... (9999/3)",
    "ws://h:1/rtc/v1?join_request=eyJhbGciOi.eyJzdWIiOi.sig", "Answer(SessionDescription {", "1046 > 1, 2 packets missing",
    "71 ms", "v0.12.48", "LeaveRequest { can_reconnect: true, reason: Migration, action: Disconnect }",
    "JoinResponse { server_info: Some(ServerInfo { region: \"r\", protocol: 16 }), subscriber_primary: true }",
]


@st.composite
def messages(draw):
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.text(max_size=200))
    prefix = draw(st.sampled_from(PREFIXES))
    if kind == 1:
        return prefix + draw(st.sampled_from(SAMPLES))
    if kind == 2:  # near misses: a char dropped / changed / case flipped
        i = draw(st.integers(0, max(0, len(prefix) - 1)))
        mutated = prefix[:i] + draw(st.sampled_from(["", "X", " ", "\u00e9", prefix[i:i + 1].swapcase()])) + prefix[i + 1:]
        return mutated + draw(st.sampled_from(SAMPLES))
    if kind == 3:  # huge
        return prefix + draw(st.sampled_from(SAMPLES)) * draw(st.integers(1, 20)) + "x" * draw(st.integers(0, 300_000))
    return prefix + draw(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300))


records = st.tuples(st.sampled_from([10, 20, 30, 40, 0, 99]), st.sampled_from(TARGETS), st.integers(0, 5000),
                    messages())
room_events = st.tuples(st.sampled_from(["connection_state_changed", "reconnecting", "reconnected", "disconnected",
                                         "moved", "participant_disconnected", "local_track_republished", "bogus"]),
                        st.dictionaries(st.sampled_from(["state", "reason", "disconnect_reason", "room_handle"]),
                                        st.one_of(st.integers(-5, 20), st.text(max_size=5), st.none()), max_size=3))
calls = st.lists(st.one_of(
    records.map(lambda r: ("record", r)),
    room_events.map(lambda e: ("room_event", e)),
    st.sampled_from([("connect_started", None), ("connect_finished_ok", None), ("connect_finished_err", None),
                     ("closed", None)]),
), max_size=80)


def _run(seq, version):
    _errors.reset_for_tests()
    sink = ListSink()
    m = EngineMachine(sink, version=version)
    t = 1_700_000_000_000_000_000
    peak = 0
    for op, arg in seq:
        t += 7_000_000
        if op == "record":
            level, target, line, msg = arg
            m.record(parse(level, target, line, target, msg), t)  # parse must not raise either
        elif op == "room_event":
            m.room_event(arg[0], t, **arg[1])
        elif op == "connect_started":
            m.connect_started(t, "wss://x.livekit.cloud")
        elif op == "connect_finished_ok":
            m.connect_finished(t, None)
        elif op == "connect_finished_err":
            m.connect_finished(t, "engine: signal failure: transport timed out")
        else:
            m.closed(t)
        peak = max(peak, m.open_count())
        assert len(m._pre) <= MAX_PRE_EVENTS
    assert not _errors.errors, _errors.errors  # nothing was swallowed by a guard: no internal error at all
    assert peak <= 12 < MAX_OPEN
    m.closed(t + 1)
    assert m.open_count() == 0
    # every end matches an earlier start, no key ends twice
    started, ended = set(), set()
    for c in sink.calls:
        if c.op == "start":
            assert c.key not in started
            started.add(c.key)
        elif c.op == "end":
            assert c.key in started and c.key not in ended
            ended.add(c.key)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(calls, st.sampled_from(["1.1.2", "1.1.21", "1.2.0", None]))
def test_machine_never_raises_and_stays_bounded(monkeypatch_strict, seq, version):
    _run(seq, version)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(records)
def test_parse_never_raises(rec):
    level, target, line, msg = rec
    parse(level, target, line, target, msg)


def test_memory_bounded_over_a_long_run(monkeypatch_strict):
    """100k records of every recognised kind, in loops: traced memory does not grow with the number of records."""
    import random

    rnd = random.Random(7)
    seqs = []
    for _ in range(2000):
        lvl = rnd.choice([10, 20, 30, 40])
        tgt = rnd.choice(TARGETS)
        seqs.append((lvl, tgt, 1, rnd.choice(PREFIXES) + rnd.choice(SAMPLES)))
    sink = _CountingSink()
    m = EngineMachine(sink, version="1.1.21")
    t = 1_700_000_000_000_000_000

    def burst(n):
        nonlocal t
        for i in range(n):
            t += 1_000_000
            if i % 500 == 0:
                m.connect_started(t, "ws://h:1")
            if i % 500 == 250:
                m.connect_finished(t, None)
            lvl, tgt, line, msg = seqs[i % len(seqs)]
            m.record(parse(lvl, tgt, line, tgt, msg), t)

    burst(20_000)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    burst(100_000)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert after - before < 200_000, f"grew by {after - before} bytes"
    assert m.open_count() <= 12 and sink.n > 1000


class _CountingSink:
    def __init__(self):
        self.n = 0

    def start(self, *a, **k):
        self.n += 1

    def end(self, *a, **k):
        self.n += 1

    def event(self, *a, **k):
        self.n += 1

"""The selected ICE candidate pair, read with get_rtc_stats() after the connect, on the connect span.

Real Room (Rust SDK) against the double over real ICE inside the test's network namespace.
"""

from __future__ import annotations

import time

import pytest

from .conftest import wait_spans

pytestmark = [pytest.mark.rtc, pytest.mark.lk_netns, pytest.mark.e2e]

ICE = "lk_probe.ice."


def _primary(connect) -> str:
    pcs = {k.split(".")[2] for k in connect.attributes if k.startswith(ICE) and k.count(".") == 3}
    assert len(pcs) == 1, connect.attributes
    return pcs.pop()


async def test_selected_pair_lands_on_the_connect_span_without_lengthening_it(lk_double, capspans, connected):
    await connected("ivy", single_peer_connection=True)
    returned = time.time_ns() / 1e9
    spans = await wait_spans(capspans, lambda s: s.named("rtc.connect"), 5)
    connect = spans.phase("rtc.connect")
    attrs = connect.attributes
    assert _primary(connect) == "publisher"  # single PC: everything rides on the publisher PC
    assert attrs[ICE + "publisher.local_candidate_type"] == "host"
    assert attrs[ICE + "publisher.remote_candidate_type"] == "host"
    assert attrs[ICE + "publisher.protocol"] == "udp"
    assert attrs[ICE + "publisher.relayed"] is False
    assert 0.0 <= attrs[ICE + "publisher.rtt_ms"] < 1000.0
    # the stats are read after the call returned: the span's end is the connect's, not the stats read's
    assert connect.end <= returned + 0.001
    assert not any("127." in str(v) for k, v in attrs.items() if k.startswith(ICE))  # never an address


async def test_a_server_hidden_behind_its_checks_is_a_peer_reflexive_remote(lk_double, capspans, connected):
    # the double hides its candidates: the client only learns the server's address from the server's own
    # connectivity checks, so the selected pair's remote candidate is peer-reflexive (a NAT-like path)
    lk_double.faults.add("ice_candidates_hidden", count=1)
    await connected("jack", single_peer_connection=True)
    spans = await wait_spans(capspans, lambda s: s.named("rtc.connect"), 5)
    connect = spans.phase("rtc.connect")
    assert connect.attributes[ICE + "publisher.remote_candidate_type"] == "prflx", connect.attributes
    assert connect.attributes[ICE + "publisher.local_candidate_type"] == "host"
    assert lk_double.events.of_kind("fault_fired", lambda e: e["name"] == "ice_candidates_hidden")


async def test_dual_pc_reports_the_pc_that_carries_data(lk_double, capspans, connected):
    await connected("kim", single_peer_connection=False)  # the double's default: subscriber primary
    spans = await wait_spans(capspans, lambda s: s.named("rtc.connect"), 5)
    connect = spans.phase("rtc.connect")
    assert connect.attributes[ICE + "subscriber.protocol"] == "udp"
    assert connect.attributes[ICE + "subscriber.relayed"] is False


@pytest.fixture
def no_ice_stats(monkeypatch):
    monkeypatch.setenv("LK_PROBE_ICE_STATS", "false")


async def test_ice_stats_can_be_switched_off(no_ice_stats, lk_double, capspans, connected):
    await connected("lee", single_peer_connection=True)
    spans = await wait_spans(capspans, lambda s: s.named("rtc.connect"), 5)
    assert not [k for k in spans.phase("rtc.connect").attributes if k.startswith(ICE)]


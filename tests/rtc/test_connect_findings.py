"""Findings of the connect that only a real Room against the double's faults produces: a token the server refuses,
and a connect that is slow with no more specific cause. Each asserts the finding's code, its evidence and the span it
points at."""

from __future__ import annotations

import asyncio

import pytest

from lk_probe.findings import diagnose
from lk_probe.testing import mint_token

from .conftest import wait_spans

pytestmark = [pytest.mark.rtc, pytest.mark.lk_netns, pytest.mark.e2e]


async def test_a_token_signed_with_the_wrong_secret_is_auth_failed(lk_double, capspans):
    from livekit import rtc

    token = mint_token(lk_double.api_key, "not-the-secret-of-this-livekit-project", identity="mallory",
                       video={"roomJoin": True, "room": "auth"})
    room = rtc.Room()
    with pytest.raises(Exception):
        await asyncio.wait_for(room.connect(lk_double.url, token), 30)
    await room.disconnect()
    spans = await wait_spans(capspans, lambda s: s.named("rtc.connect") and s.phase("rtc.connect").end)
    assert lk_double.events.of_kind("signal_rejected", lambda e: e["status"] == 401)  # the double refused it

    (finding,) = diagnose(spans)  # the generic slow/failed connect is explained by it
    about = spans.by_id(finding.span_id)
    assert finding.code == "auth_failed" and "refused the token" in finding.summary
    assert about.attributes["error.type"] == "auth"
    assert about.phase in ("rtc.signal", "rtc.validate", "rtc.attempt", "rtc.connect")
    assert f"{about.phase} at +" in finding.evidence and "failed with error.type=auth" in finding.evidence
    # the first span that failed with auth: nothing refused earlier
    assert about.start_ns == min(s.start_ns for s in spans if s.attributes.get("error.type") == "auth")


async def test_a_signal_upgrade_held_1_5s_is_a_slow_connect_with_no_other_cause(lk_double, capspans, connected,
                                                                               monkeypatch):
    # the connect's budget lowered to 1 s so that 1.5 s — under the SDK's 5 s signal timeout, so no retry — is over
    monkeypatch.setenv("LK_PROBE_BUDGET_RTC_CONNECT", "1.0")
    lk_double.faults.add("signal_upgrade_delay", delay=1.5, count=1)
    await connected("walt")
    spans = await wait_spans(capspans, lambda s: s.named("rtc.connect") and s.phase("rtc.connect").end, 5)
    connect = spans.phase("rtc.connect")
    assert len(spans.phases("rtc.attempt")) == 1 and not connect.error

    (finding,) = diagnose(spans)
    assert finding.code == "slow_connect" and finding.phase == "rtc.connect" and finding.span_id == connect.span_id
    assert finding.evidence.startswith(f"rtc.connect took {connect.duration:.1f} s (budget 1.0 s); 1 engine attempt")
    assert 1.5 <= finding.durations["rtc.connect"] < 3.0

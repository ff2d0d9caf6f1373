"""A connect that is slow with no more specific cause, from a real Room against the double's fault: the finding's
code, its evidence and the span it points at. (The refused token is tested in a real job process:
tests/core/test_findings_live.py.)"""

from __future__ import annotations

import pytest

from lk_probe.findings import diagnose

from .conftest import wait_spans

pytestmark = [pytest.mark.rtc, pytest.mark.lk_netns, pytest.mark.e2e]


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

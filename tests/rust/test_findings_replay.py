"""Findings from recorded engine runs: every capture in tests/data/records replayed through the production path
(EngineMachine → Recorder → OTel spans) and diagnosed. The captures are real runs of livekit 1.1.2 / 1.1.21 / 1.2.0
against the server double (``real-*``) and lines transcribed from user reports (``transcribed-*``)."""

from __future__ import annotations

import re

import pytest
from replay import DATA, load, replay_rows

from lk_probe._ids import job_parent_context
from lk_probe._recorder import Recorder
from lk_probe.findings import diagnose

# capture (without its version) → the findings' codes, most specific first; [] is a healthy run
EXPECTED = {
    "real-ok": [], "real-leave_resume": [], "real-leave_reconnect": [], "real-signal_abort": [],
    "real-leave_disconnect": [],  # the server ended the session on purpose: no failure
    "real-cloud_region_timeout": ["egress_contention"],
    "real-cloud_region_fallback": ["signal_connect_timeout"],
    "real-signal_timeout_once": ["signal_connect_timeout"],
    "real-give_up": ["reconnect_failed"],
    "real-http_503_once": [],
    "real-ice_never_once": ["ice_never_connects"],
    "real-join_delay": ["slow_join_response"],
    "real-lose_node": ["resume_refused"],
    "real-refuse_resume": ["resume_refused"],
    "real-v1_404": ["v1_fallback"],
    "transcribed-1.1.2-cloud-v0-timeout-region-timeout": ["egress_contention"],
    "transcribed-1.1.21-cloud-region-timeout": ["egress_contention"],
    "transcribed-1.1.2-gave-up": ["reconnect_failed"],
    "transcribed-1.1.21-leave-resume": [],
    "transcribed-1.1.21-refuse-resume": ["resume_refused"],
    "transcribed-1.1.21-v1-404-fallback": ["v1_fallback"],
    "transcribed-1.1.21-v1-timeout-once": ["signal_connect_timeout"],
    "transcribed-1.2.0-ice-never": ["ice_never_connects"],
    "transcribed-1.2.0-join-timeout-once": ["slow_join_response"],
    "transcribed-1.1.2-seed004-migration": ["migration_never_recovers"],
}
# livekit 1.1.2 reports its token-less validate request's 401 in place of the first failure: an extra finding
ARTEFACT_112 = {"real-signal_timeout_once", "real-http_503_once", "real-give_up"}


def _diagnosed(capspans, name: str):
    meta, rows = load(name)
    rec = Recorder(job_parent_context("AJ_replay", 1), attributes={"lk.job_id": "AJ_replay"}, label="AJ_replay")
    # seed 004: the call had been up for 34 s when the migration began
    replay_rows(meta, rows, rec, state="connected" if "seed004" in name else None)
    rec.close_all(t=rows[-1]["t"] + 1_000_000_000, error_type="incomplete")
    spans = capspans.spans
    return spans, diagnose(spans, livekit_version=meta["livekit"]), meta


CAPTURES = sorted(p.name for p in DATA.glob("*.jsonl"))


@pytest.mark.parametrize("name", CAPTURES)
def test_every_capture_gets_its_findings(capspans, name):
    stem = re.sub(r"-1\.\d+\.\d+\.jsonl$", "", name).removesuffix(".jsonl")
    assert stem in EXPECTED, f"{name}: add the findings it should get to EXPECTED"
    _, found, meta = _diagnosed(capspans, name)
    want = list(EXPECTED[stem])
    if stem in ARTEFACT_112 and meta["livekit"] == "1.1.2":
        want.append("auth_artefact")
    assert [f.code for f in found] == want, [(f.code, f.evidence) for f in found]
    for f in found:
        assert f.summary and f.evidence and f.check and f.span_id and "{" not in f.summary


@pytest.mark.parametrize("name", ["real-cloud_region_timeout-1.1.2.jsonl", "real-cloud_region_timeout-1.2.0.jsonl",
                                  "transcribed-1.1.2-cloud-v0-timeout-region-timeout.jsonl"])
def test_report_000_names_egress_contention_with_the_5s_and_the_3s(capspans, name):
    spans, found, _ = _diagnosed(capspans, name)
    first = found[0]
    assert first.code == "egress_contention" and first.phase == "rtc.attempt"
    assert "timed out after 5.0 s" in first.evidence and "timed out after 3.0 s" in first.evidence
    assert ".livekit.cloud" in first.evidence
    assert 4.9 < first.durations["rtc.signal"] < 5.3 and 2.9 < first.durations["rtc.region_fetch"] < 3.3
    assert spans.by_id(first.span_id).attributes["lk_probe.attempt"] == 1


def test_report_004_names_the_migration_that_never_recovers_and_the_livekit_version(capspans):
    _, found, _ = _diagnosed(capspans, "transcribed-1.1.2-seed004-migration.jsonl")
    (f,) = found
    assert f.code == "migration_never_recovers" and f.phase == "rtc.reconnect"
    assert "livekit 1.1.2" in f.summary and "Answer too late" in f.summary
    assert "signal_event on Answer took over 10 s" in f.evidence and "subscriber PC failed" in f.evidence

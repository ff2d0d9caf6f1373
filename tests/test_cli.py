"""``lk-probe diagnose`` / ``show`` on OTLP JSON: a recorded engine run (report 000) replayed through the production
path into spans, written as OTLP JSON, read back by the command; bad input is one line and exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lk_probe import otlpjson
from lk_probe.__main__ import main
from lk_probe._ids import job_parent_context
from lk_probe._recorder import Recorder

sys.path.insert(0, str(Path(__file__).resolve().parent / "rust"))
from replay import load, replay_rows  # noqa: E402

JOB = "AJ_NWYstzRMnfLS"


@pytest.fixture
def report_000(capspans, tmp_path):
    """Report 000's records (livekit 1.1.21) as the OTLP JSON a file exporter would have written."""
    meta, rows = load("real-cloud_region_timeout-1.1.21.jsonl")
    rec = Recorder(job_parent_context(JOB, 1), attributes={"lk.job_id": JOB}, label=JOB)
    replay_rows(meta, rows, rec)
    rec.close_all(t=rows[-1]["t"])
    path = tmp_path / "spans.json"
    path.write_text(otlpjson.dumps(capspans.spans))
    return path


def test_otlp_json_round_trip_keeps_what_the_findings_read(report_000, capspans):
    back = otlpjson.load(report_000)
    assert back.as_dicts(normalize=True) == capspans.spans.as_dicts(normalize=True)


def test_diagnose_names_egress_contention_first_with_the_5s_and_3s(report_000, capsys):
    assert main(["diagnose", str(report_000)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith(f"job {JOB}") and lines[1].startswith("  1. egress_contention")
    evidence = next(line for line in lines if "evidence:" in line)
    assert "timed out after 5.0 s" in evidence and "timed out after 3.0 s" in evidence


def test_diagnose_json_and_job_filter(report_000, capsys, tmp_path):
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "a.json").write_text(report_000.read_text())
    assert main(["diagnose", str(folder), "--job", JOB, "--json"]) == 0
    (job,) = json.loads(capsys.readouterr().out)
    assert job["job_id"] == JOB and job["findings"][0]["code"] == "egress_contention"
    assert job["findings"][0]["durations"]["rtc.region_fetch"] == pytest.approx(3.0, abs=0.3)


def test_show_prints_the_waterfall_and_the_findings_under_it(report_000, capsys):
    assert main(["show", str(report_000), "--width", "100"]) == 0
    out = capsys.readouterr().out
    assert "rtc.region_fetch" in out and out.index("rtc.attempt") < out.index("findings for job")
    assert "egress_contention" in out.split("findings for job")[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lk_probe", *args], capture_output=True, text=True, timeout=60)


def test_bad_input_is_one_line_and_exit_status_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"resourceSpans": [')
    nojob = tmp_path / "nojob.json"
    nojob.write_text(json.dumps({"resourceSpans": [{"resource": {}, "scopeSpans": [{"scope": {"name": "x"}, "spans": [
        {"traceId": "1" * 32, "spanId": "2" * 16, "name": "rtc.connect", "startTimeUnixNano": "1",
         "endTimeUnixNano": "2"}]}]}]}))
    nototlp = tmp_path / "other.json"
    nototlp.write_text('{"hello": 1}')
    for args, says in ((["diagnose", str(tmp_path / "missing.json")], "no such file"),
                       (["diagnose", str(bad)], "malformed JSON"),
                       (["show", str(nojob)], "no job in it"),
                       (["diagnose", str(nototlp)], "not OTLP JSON"),
                       (["diagnose", str(nojob), "--job", "AJ_x"], "no job AJ_x")):
        r = _run(*args)
        assert r.returncode == 2 and r.stdout == "", (args, r)
        assert len(r.stderr.strip().splitlines()) == 1 and says in r.stderr, (args, r.stderr)


def test_the_tables_still_print():
    r = _run("findings")
    assert r.returncode == 0 and "`egress_contention`" in r.stdout

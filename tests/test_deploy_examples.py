"""The deployment examples (examples/deploy: Collector config, docker-compose, Tempo, Prometheus, Grafana) cannot run
here (no docker). What can be checked is checked: every file parses, and every lk_probe name they use — attribute,
metric (also in its Prometheus form), phase, finding code, outcome — is one lk_probe emits (the catalogue)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lk_probe import _catalogue as c
from lk_probe._findings import RULES

DEPLOY = Path(__file__).resolve().parent.parent / "examples" / "deploy"
FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".json"))

# an lk_probe / LiveKit name: dotted (lk_probe.finding.code, lk.job_id, span.lk_probe.phase) or in Prometheus form
# (lk_probe_phase_duration_seconds_bucket, the label lk_probe_finding_code); "lk_probe.finding.*" names a family
_NAME = re.compile(r"(?<![\w.])(?:span\.|resource\.)?((?:lk_probe|lk)[._][A-Za-z0-9_.]*[A-Za-z0-9_])(\.\*)?")
_PROM_SUFFIXES = ("_seconds_bucket", "_seconds_count", "_seconds_sum", "_seconds", "_total", "_bucket", "_count",
                  "_sum")
_FILE_NAME = re.compile(r"\.(json|yaml|yml)$")


def _known() -> tuple[set[str], set[str]]:
    """(dotted names, their Prometheus forms) lk_probe emits: attributes, event names, metrics."""
    metrics = {c.METRIC_PHASE_DURATION, c.METRIC_PHASE_OUTCOME, c.METRIC_FINDINGS}
    dotted = set(c.ATTRIBUTES) | set(c.EVENTS) | metrics
    prom = {n.replace(".", "_") for n in dotted}
    return dotted, prom


def unknown_names(text: str) -> set[str]:
    """The lk_probe names in ``text`` that the catalogue does not know."""
    dotted, prom = _known()
    bad = set()
    for name, family in _NAME.findall(text):
        if name == "lk_probe" or _FILE_NAME.search(name):
            continue  # the package itself, a file name (lk_probe.json)
        if family:
            if not any(k.startswith(name + ".") for k in dotted):
                bad.add(name + family)
            continue
        if "." in name:
            if name not in dotted:
                bad.add(name)
            continue
        base = next((name[:-len(s)] for s in _PROM_SUFFIXES if name.endswith(s) and name[:-len(s)] in prom), name)
        if base not in prom:
            bad.add(name)
    return bad


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(DEPLOY)) for p in FILES])
def test_every_file_parses_and_uses_only_catalogued_names(path):
    text = path.read_text()
    if path.suffix == ".json":
        json.loads(text)
    else:
        yaml = pytest.importorskip("yaml")
        assert isinstance(yaml.safe_load(text), dict)
    assert unknown_names(text) == set()


def test_the_name_check_catches_a_name_lk_probe_does_not_emit():
    assert unknown_names("key: lk_probe.finding.code\nexpr: rate(lk_probe_findings_total[5m])") == set()
    assert unknown_names("key: lk_probe.finding.kode") == {"lk_probe.finding.kode"}
    assert unknown_names("sum(rate(lk_probe_phase_durations_seconds_bucket[5m]))") == \
        {"lk_probe_phase_durations_seconds_bucket"}
    assert unknown_names('{ span.lk.job_idd = "x" }') == {"lk.job_idd"}
    assert unknown_names("lk_probe's lk_probe.finding.* on the job") == set()
    assert unknown_names("lk_probe.findingz.* on the job") == {"lk_probe.findingz.*"}


def _policies() -> dict[str, dict]:
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
    return {p["name"]: p for p in config["processors"]["tail_sampling"]["policies"]}


def test_tail_sampling_keeps_every_finding_code_and_only_real_values():
    policies = _policies()
    assert policies["findings"]["string_attribute"]["key"] == c.FINDING_CODE
    assert policies["findings"]["string_attribute"]["values"] == [r.code for r in RULES]  # a new code: add it there
    assert policies["stalls"]["string_attribute"] == {"key": c.PHASE, "values": ["stall"]}
    assert "stall" in c.BY_NAME
    assert policies["errors"]["status_code"]["status_codes"] == ["ERROR"]
    assert policies["retried-connects"]["numeric_attribute"]["key"] == c.ATTEMPT
    outcomes = policies["jobs-that-never-ran"]["string_attribute"]
    assert outcomes["key"] == c.OUTCOME
    source = "".join(p.read_text() for p in (Path(c.__file__).parent / "_patches").glob("*.py"))
    for value in outcomes["values"]:  # outcomes lk_probe's worker and job patches actually set
        assert f'"{value}"' in source, value


def test_the_dashboard_queries_lk_probe_metrics_by_their_catalogued_labels():
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "lk_probe.json").read_text())
    queries = [t.get("expr") or t.get("query") for p in dash["panels"] for t in p["targets"]]
    text = "\n".join(queries)
    for metric, label in ((c.METRIC_PHASE_DURATION, c.PHASE), (c.METRIC_PHASE_OUTCOME, c.OUTCOME),
                          (c.METRIC_FINDINGS, c.FINDING_CODE)):
        assert metric.replace(".", "_") in text and label.replace(".", "_") in text, metric
    assert f"span.{c.STALL_PHASE}" in text

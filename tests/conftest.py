"""Fixtures shared by lk_probe's own tests (the public ones come from lk_probe's pytest plugin)."""

import os

import pytest

import lk_probe
from lk_probe import _provider


@pytest.fixture
def install_from_env(monkeypatch):
    """``install_from_env(VAR=value, ...)``: lk_probe.install() with the provider it builds from those OTEL_* / LK_PROBE_*
    variables (not made global); uninstalled and the provider shut down after the test."""

    def install(**env: str) -> None:
        monkeypatch.setenv("LK_PROBE_SET_GLOBAL_PROVIDER", "false")
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        lk_probe.install()

    yield install
    provider = _provider.current()
    lk_probe.uninstall()
    _provider.reset()
    if provider is not None and hasattr(provider, "shutdown"):
        provider.shutdown()


# ---------------------------------------------------------------------------------------------------------------
# Everything exported during the whole session — every span captured by capspans and every span received by an OTLP
# receiver (from real workers and job processes) — is scanned at the end:
# * for secrets: a JWT, an access_token, a join_request, a bearer token, or any API secret a server double handed out;
# * against the catalogue: every attribute and event name lk_probe emitted must be catalogued, and no attribute value
#   may be one a common backend cannot represent (an infinity or NaN).
# A finding fails the session.

_SCANNED: list = []
_SECRETS: set[str] = set()


@pytest.fixture
def capspans(capspans):  # noqa: F811 - wraps the plugin's fixture
    yield capspans
    _SCANNED.extend(capspans.spans)


@pytest.fixture
def otlp_receiver(otlp_receiver):  # noqa: F811
    yield otlp_receiver
    _SCANNED.extend(otlp_receiver.spans())


@pytest.fixture
def lk_double(lk_double):  # noqa: F811
    _SECRETS.add(lk_double.api_secret)
    yield lk_double


def pytest_sessionfinish(session, exitstatus):
    from lk_probe.testing.secrets import find_secrets

    findings = find_secrets(_SCANNED, extra=sorted(s for s in _SECRETS if s))
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(f"lk_probe secret scan: {len(_SCANNED)} exported spans, {len(findings)} findings")
        for f in findings[:20]:
            reporter.write_line(f"  SECRET LEAK: {f}", red=True)
    from lk_probe._catalogue import uncatalogued

    problems = uncatalogued(_SCANNED)
    if reporter is not None:
        reporter.write_line(f"lk_probe vocabulary scan: {len(_SCANNED)} exported spans, {len(problems)} problems")
        for line in problems[:40]:
            reporter.write_line(f"  NOT CATALOGUED: {line}", red=True)
    if findings or problems:
        session.exitstatus = 1
    if os.environ.get("LK_PROBE_MATRIX_REPORT"):
        _write_matrix_report(os.environ["LK_PROBE_MATRIX_REPORT"])


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave without finalizing the interpreter once the run's result is settled.

    livekit 1.2.0's Rust runtime can abort the process while Python finalizes after a fully green run ("thread
    'tokio-rt-worker' panicked ... panic in a function that cannot unwind", exit 250; seen once in about five runs
    of the rtc set). That is an upstream teardown race, not a test result, so the suite's exit status is taken here
    and the process ends with it. Only when livekit.rtc's FFI was started in this process.
    """
    import sys

    ffi = sys.modules.get("livekit.rtc._ffi_client")
    session = getattr(config, "_lk_probe_session", None)
    if ffi is None or session is None or getattr(ffi.FfiClient, "_instance", None) is None:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(int(session.exitstatus))


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    session.config._lk_probe_session = session


# ---------------------------------------------------------------------------------------------------------------
# The compatibility matrix (scripts/matrix.py): with LK_PROBE_MATRIX_REPORT=<file>, the session writes there the
# versions it ran on, its totals and the outcome of every smoke test, by capability.

_SMOKE_OF: dict[str, str] = {}  # nodeid -> capability
_OUTCOMES: dict[str, dict] = {}  # nodeid -> {"outcome", "reason"}; the last run of a rerun test counts


def _capabilities() -> dict[str, str]:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("lk_probe_matrix", Path(__file__).parent.parent / "scripts" /
                                                  "matrix.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.CAPABILITIES


def pytest_collection_modifyitems(config, items):
    known = _capabilities()
    for item in items:
        mark = item.get_closest_marker("smoke")
        if mark is None:
            continue
        assert mark.args and mark.args[0] in known, f"{item.nodeid}: smoke(capability) takes one of {sorted(known)}"
        _SMOKE_OF[item.nodeid] = mark.args[0]


def pytest_runtest_logreport(report):
    if report.outcome == "rerun":
        _OUTCOMES.pop(report.nodeid, None)
        return
    entry = _OUTCOMES.setdefault(report.nodeid, {"outcome": "passed", "reason": ""})
    if report.failed:
        entry["outcome"] = "failed"
    elif report.skipped and entry["outcome"] != "failed":
        entry["outcome"] = "skipped"
        longrepr = report.longrepr
        entry["reason"] = (longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)).removeprefix("Skipped: ")


def _write_matrix_report(path: str) -> None:
    import json
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("livekit-agents", "livekit", "livekit-api", "opentelemetry-sdk"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    totals: dict[str, int] = {}
    for entry in _OUTCOMES.values():
        totals[entry["outcome"]] = totals.get(entry["outcome"], 0) + 1
    smoke: dict[str, list] = {}
    for nodeid, capability in sorted(_SMOKE_OF.items()):
        if nodeid in _OUTCOMES:
            smoke.setdefault(capability, []).append({"test": nodeid, **_OUTCOMES[nodeid]})
    with open(path, "w") as f:
        json.dump({"versions": versions, "totals": totals, "smoke": smoke}, f, indent=1, sort_keys=True)


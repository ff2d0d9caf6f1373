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

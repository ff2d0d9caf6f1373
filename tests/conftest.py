"""Fixtures shared by lk_probe's own tests (the public ones come from lk_probe's pytest plugin)."""

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
    provider = _provider._state.get("provider")
    lk_probe.uninstall()
    _provider.reset()
    if provider is not None and hasattr(provider, "shutdown"):
        provider.shutdown()

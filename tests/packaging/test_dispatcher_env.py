"""A dispatching backend's environment: only livekit-api, then ``pip install <repo>`` without extras.

``python3 scripts/dev.py test --set packaging`` builds it fresh (and rebuilds it whenever src/ or pyproject.toml
change) and points ``LK_PROBE_DISPATCHER_ENV`` at it; these tests run its Python in subprocesses, with no
PYTHONPATH, OTEL_* or LK_PROBE_* variables, so they see exactly what that install gave.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ENV = os.environ.get("LK_PROBE_DISPATCHER_ENV")
pytestmark = pytest.mark.skipif(not ENV, reason="needs the environment `python3 scripts/dev.py test --set packaging` "
                                                "builds (LK_PROBE_DISPATCHER_ENV)")

# what a dispatching backend must not get from lk_probe: the instrumented agents stack, the test and CLI extras
NOT_PULLED = ("livekit-agents", "livekit", "pytest", "rich", "aiortc", "numpy", "av")


def run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONPATH" and not k.startswith(("OTEL_", "LK_PROBE_", "PYTEST_"))}
    return subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)


def python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return run([str(Path(ENV) / "bin" / "python"), "-c", code], tmp_path)


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_pip_install_pulled_in_neither_the_agents_stack_nor_the_extras(tmp_path):
    report = json.loads((Path(ENV) / "install-report.json").read_text())
    pulled = sorted(_norm(item["metadata"]["name"]) for item in report["install"])
    assert "lk-probe" in pulled
    assert [n for n in NOT_PULLED if n in pulled] == [], f"`pip install <repo>` installed: {pulled}"
    # nor were they there before: the environment holds none of them now
    r = python("import importlib.metadata as m, json, sys\n"
               "print(json.dumps(sorted(d.metadata['Name'] for d in m.distributions())))", tmp_path)
    present = [_norm(n) for n in json.loads(r.stdout)]
    assert "livekit-api" in present and [n for n in NOT_PULLED if n in present] == []


def test_install_instruments_livekit_api_and_says_nothing_about_the_parts_it_skips(tmp_path):
    r = python("""
import json, sys
import lk_probe
from lk_probe import _patching
lk_probe.install()
state = {"installed": lk_probe.installed(), "patched": sorted({m for m, _ in _patching.patched()}),
         "imported": sorted(m for m in ("livekit.agents", "livekit.rtc", "pytest", "rich") if m in sys.modules)}
lk_probe.uninstall()
state["after_uninstall"] = [lk_probe.installed(), _patching.patched()]
print(json.dumps(state))
""", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no warning (logging's last-resort handler writes them here), no traceback
    state = json.loads(r.stdout)
    assert state["installed"] and state["patched"] and all(m.startswith("livekit.api.") for m in state["patched"])
    assert (state["imported"], state["after_uninstall"]) == ([], [False, []])


def test_opentelemetry_instrument_loads_the_instrumentor(tmp_path):
    """``instruments-any``: OpenTelemetry's auto-instrumentation loads lk_probe when any instrumented package is
    there (with an ``instruments`` extra it would require livekit-agents and skip lk_probe here)."""
    bin_ = Path(ENV) / "bin"
    r = run([str(bin_ / "opentelemetry-instrument"), "--traces_exporter", "none", "--metrics_exporter", "none",
             "--logs_exporter", "none", str(bin_ / "python"), "-c", "import lk_probe; print(lk_probe.installed())"],
            tmp_path)
    assert (r.returncode, r.stdout.strip()) == (0, "True"), r.stderr
    assert "lk_probe" not in r.stderr and "livekit" not in r.stderr, r.stderr


def test_cli_and_waterfall_work_without_the_cli_extra(tmp_path):
    r = python("import io; from lk_probe.waterfall import print_waterfall; print_waterfall([], io.StringIO(), "
               "color=True); from lk_probe.__main__ import main; raise SystemExit(main(['phases']))", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "job.assignment" in r.stdout

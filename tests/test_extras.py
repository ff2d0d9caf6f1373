"""What works without the optional extras: the pytest plugin registers without importing the server double (and a
fixture that needs the double fails with one message naming the `testing` extra), and the waterfall prints plain
text without rich (the `cli` extra)."""

from __future__ import annotations

import io
import sys

from test_waterfall import SPANS

from lk_probe.waterfall import print_waterfall, render

pytest_plugins = ["pytester"]

# a conftest that leaves only lk_probe without extras, and pytest: the testing extra's packages, and livekit's
# (which bring some of them), look uninstalled
NO_TESTING_EXTRA = """
import sys

class Uninstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("aiohttp", "aiortc", "jwt", "livekit"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Uninstalled())
"""


def test_registering_the_plugin_imports_none_of_the_double(pytester):
    pytester.makepyfile("""
        import sys

        def test_registered(request):
            assert request.config.pluginmanager.has_plugin("lk_probe")
            assert [m for m in ("lk_probe.testing", "aiohttp", "aiortc", "jwt", "rich") if m in sys.modules] == []
    """)
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_without_the_testing_extra_the_double_fixtures_fail_with_one_clear_message(pytester):
    pytester.makeconftest(NO_TESTING_EXTRA)
    pytester.makepyfile("""
        def test_double(lk_double):
            pass

        def test_worker(agent_worker):
            pass

        def test_receiver(otlp_receiver):
            pass

        def test_spans_need_no_extra(capspans):
            assert len(capspans.spans) == 0
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=3)
    message = "fixture needs lk_probe's testing extra (jwt is not installed): pip install 'lk-probe[testing]'"
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if " ERRORS " in line)
    end = next(i for i, line in enumerate(lines) if "short test summary" in line)
    # one message per error (agent_worker's is its lk_double's), and no traceback of the import before it
    assert [line for line in lines[start + 1:end] if line and not line.startswith("_")] == [
        f"the lk_double {message}", f"the lk_double {message}", f"the otlp_receiver {message}"]


def test_the_waterfall_prints_plain_text_without_rich(monkeypatch):
    monkeypatch.setitem(sys.modules, "rich", None)  # as if the cli extra were not installed
    monkeypatch.setitem(sys.modules, "rich.console", None)
    buf = io.StringIO()
    print_waterfall(SPANS, buf, width=82, color=True)
    assert buf.getvalue() == render(SPANS, width=82)

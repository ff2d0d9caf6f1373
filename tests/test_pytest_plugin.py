"""The pytest plugin, run in isolated pytester sessions: capspans captures real spans, and strict mode turns an
error swallowed inside lk_probe into a test failure."""

pytest_plugins = ["pytester"]


def test_capspans_captures_phases_and_is_inert_otherwise(pytester):
    pytester.makepyfile("""
        import lk_probe
        from lk_probe._recorder import Recorder

        def test_uses_it(capspans):
            assert lk_probe.installed()
            rec = Recorder(None, attributes={"lk.job_id": "AJ_1"})
            rec.start("job.assignment", "a")
            rec.end("a")
            span = capspans.phase("job.assignment")
            assert span.duration < 0.5 and span.attributes["lk.job_id"] == "AJ_1"

        def test_does_not_use_it():
            assert not lk_probe.installed()
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_strict_mode_fails_the_test_on_a_swallowed_error(pytester):
    pytester.makepyfile("""
        from lk_probe._errors import guard

        def test_bug_inside_lk_probe(capspans):
            with guard("somewhere.inside"):
                raise ValueError("bug in lk_probe")
            # the agent's code goes on: the error was swallowed ...
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)  # ... but the test fails at teardown
    result.stdout.fnmatch_lines(["*lk_probe swallowed 1 internal error*", "*somewhere.inside*bug in lk_probe*"])

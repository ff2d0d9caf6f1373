"""The README's generated tables (phases, attributes, events, options, faults) must not drift from the code, and every
name lk_probe emits is in the catalogue."""

import re
from pathlib import Path

from lk_probe import _catalogue, _config

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _between(tag: str) -> str:
    m = re.search(rf"<!-- {tag}:begin -->\n(.*?)<!-- {tag}:end -->", README, re.S)
    assert m, f"README has no {tag} markers"
    return m.group(1).strip()


def test_readme_phase_table_is_the_catalogue():
    assert _between("phases") == _catalogue.markdown_table(), "run: python scripts/sync_readme.py"


def test_readme_attribute_and_event_tables_are_the_catalogue():
    assert _between("attributes") == _catalogue.attributes_table(), "run: python scripts/sync_readme.py"
    assert _between("events") == _catalogue.events_table(), "run: python scripts/sync_readme.py"


def test_readme_findings_table_is_the_rules():
    from lk_probe import _findings

    assert _between("findings") == _findings.markdown_table(), "run: python scripts/sync_readme.py"


def test_readme_option_table_is_the_options():
    assert _between("options") == _config.markdown_table(), "run: python scripts/sync_readme.py"


def test_readme_first_block_is_two_commands():
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert len(commands) == 2 and all(c.startswith("python3 scripts/dev.py ") for c in commands)


def _script(name: str):
    """scripts/<name>.py, loaded as a module."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "scripts" /
                                                  f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, mod)
    spec.loader.exec_module(mod)
    return mod


def test_readme_fault_table_is_the_double_s_faults():
    assert _between("faults") == _script("sync_readme").faults_table(), "run: python scripts/sync_readme.py"


def test_readme_version_table_is_the_recorded_matrix():
    """The supported-versions table is what the last test run recorded, not edited by hand."""
    matrix = _script("matrix")
    recorded = matrix.load()
    assert recorded["sets"], "no recorded matrix: run python3 scripts/dev.py test"
    assert _between("matrix") == matrix.table(recorded), "run: python scripts/sync_readme.py"


def test_the_vocabulary_scan_catches_an_uncatalogued_name_and_an_infinite_value():
    from lk_probe._catalogue import uncatalogued
    from lk_probe.spans import SpanEvent, SpanRecord

    ok = SpanRecord("rtc.signal", "1" * 32, "2" * 16, attributes={"lk_probe.phase": "rtc.signal",
                                                                  "lk_probe.signal.path": "v1"}, scope="lk_probe")
    stall = SpanRecord("stall rtc.signal", "1" * 32, "3" * 16, attributes={"lk_probe.stall.count": 1},
                       scope="lk_probe")
    agents = SpanRecord("room_connect", "1" * 32, "4" * 16, attributes={"lk.room_name": "r"}, scope="livekit-agents")
    assert uncatalogued([ok, stall, agents]) == []
    bad = [
        SpanRecord("rtc.signal", "1" * 32, "5" * 16, attributes={"lk_probe.made_up": 1}, scope="lk_probe"),
        SpanRecord("room_connect", "1" * 32, "6" * 16, attributes={"lk_probe.other": True}, scope="livekit-agents"),
        SpanRecord("job", "1" * 32, "7" * 16, attributes={"lk_probe.worker.load_threshold": float("inf")},
                   scope="lk_probe"),
        SpanRecord("job", "1" * 32, "8" * 16, events=[SpanEvent("made.up", 0, {})], scope="lk_probe"),
        SpanRecord("not_a_phase", "1" * 32, "9" * 16, scope="lk_probe"),
    ]
    problems = uncatalogued(bad)
    assert len(problems) == 5, problems
    assert any("'lk_probe.made_up'" in p for p in problems) and any("'lk_probe.other'" in p for p in problems)
    assert any("inf" in p for p in problems) and any("'made.up'" in p for p in problems)
    assert any("'not_a_phase'" in p for p in problems)


def test_every_phase_attribute_and_event_attribute_is_catalogued():
    from lk_probe import _catalogue as c

    for p in c.PHASES:
        assert set(p.attributes) <= set(c.ATTRIBUTES), (p.name, set(p.attributes) - set(c.ATTRIBUTES))
    for e in c.EVENTS.values():
        assert set(e.attributes) <= set(c.ATTRIBUTES), e.name

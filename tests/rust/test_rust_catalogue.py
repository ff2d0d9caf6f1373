"""Everything the machine emits is in the catalogue: phase names, attribute keys per phase, event names and their
attribute keys, error types. Checked over every data file."""

from __future__ import annotations

import pytest

from lk_probe._catalogue import BY_NAME, ERROR_TYPES, EVENTS
from replay import DATA, replay

NAMES = sorted(p.name for p in DATA.glob("*.jsonl"))


@pytest.mark.parametrize("name", NAMES)
def test_emitted_vocabulary_is_catalogued(name):
    sink, _, _ = replay(name)
    phase_of = {}
    for c in sink.calls:
        if c.op == "start":
            assert c.phase in BY_NAME and BY_NAME[c.phase].process == "rtc", c.phase
            phase_of[c.key] = c.phase
            if c.parent is not None:
                assert c.parent in phase_of
        if c.op in ("start", "end"):
            phase = BY_NAME[phase_of[c.key]]
            extra = set(c.attributes) - set(phase.attributes)
            assert not extra, f"{phase.name}: {extra} not in the catalogue"
        if c.op == "end" and c.error_type is not None:
            assert c.error_type in ERROR_TYPES
        if c.op == "event":
            assert c.name in EVENTS, c.name
            assert set(c.attributes) <= set(EVENTS[c.name].attributes), (c.name, c.attributes)
        for v in c.attributes.values():  # OTel attribute values: no None, no containers
            assert isinstance(v, (str, bool, int, float)), (c, v)

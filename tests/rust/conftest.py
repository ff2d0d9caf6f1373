import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest


@pytest.fixture
def monkeypatch_strict(monkeypatch):
    """Strict guards: a swallowed internal error is kept in lk_probe._errors.errors (tests assert it is empty)."""
    monkeypatch.setenv("LK_PROBE_STRICT", "1")
    yield

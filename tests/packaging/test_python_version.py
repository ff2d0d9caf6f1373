"""``requires-python`` is a promise: src/ uses nothing newer than the oldest Python it names. Only a newer Python
runs on the machines that test lk_probe, so vermin checks it statically (syntax, modules, members)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[2]
OLDEST = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"].removeprefix(">=")


def vermin(path: Path) -> subprocess.CompletedProcess[str]:
    cli = "import sys; from vermin import main; sys.exit(main())"  # the `vermin` command, with this Python
    return subprocess.run([sys.executable, "-c", cli, f"--target={OLDEST}-", "--no-tips", "--violations",
                           "--eval-annotations", str(path)], capture_output=True, text=True, timeout=300)


def test_src_uses_nothing_newer_than_requires_python():
    assert OLDEST == "3.10"
    r = vermin(ROOT / "src")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("code, reported", [
    ("try:\n    pass\nexcept* ValueError:\n    pass\n", "except*"),
    ("from typing import Self\n", "typing.Self"),
    ("import tomllib\n", "tomllib"),
    ("import asyncio\n\nasync def f():\n    async with asyncio.TaskGroup():\n        pass\n", "asyncio.TaskGroup"),
])
def test_the_check_fails_on_a_construct_newer_than_that(tmp_path, code, reported):
    (tmp_path / "newer.py").write_text(code)
    r = vermin(tmp_path)
    assert r.returncode != 0, r.stdout
    assert reported in r.stdout and "3.11" in r.stdout, r.stdout

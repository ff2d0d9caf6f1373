"""lk_probe's requirements against its code: the supported ranges are stated once (lk_probe.package), and every
third-party module src/ imports comes from what the importing part declares, so that ``pip install lk-probe``
(no extras) is enough for the instrumentation, ``lk-probe[testing]`` for the plugin, the double and the CLI.

Distributions are resolved from the installed metadata of the environment running the tests (the latest version
set, which has every extra), and requirements are followed transitively (``livekit.protocol`` comes with
livekit-api, ``grpc`` with the OTLP exporter)."""

from __future__ import annotations

import ast
import re
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from lk_probe import package

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "lk_probe"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = PROJECT["optional-dependencies"]


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(extra: str | None) -> list[Requirement]:
    """lk_probe's own requirements (no extra: the core ones), with its extras that name lk-probe[...] expanded."""
    reqs: list[Requirement] = []
    for line in PROJECT["dependencies"] if extra is None else EXTRAS[extra]:
        req = Requirement(line)
        if _canon(req.name) == "lk-probe":
            reqs += [r for e in sorted(req.extras) for r in _requirements(e)]
        else:
            reqs.append(req)
    return reqs


def test_the_supported_ranges_are_stated_once():
    declared = [str(Requirement(r)) for r in EXTRAS["instruments-any"]]
    assert declared == [str(Requirement(r)) for r in package._instruments_any]
    assert [Requirement(r).name for r in package._instruments_any] == list(package.SUPPORTED)
    # an `instruments` extra would make opentelemetry-instrument require every one of them
    assert "instruments" not in EXTRAS and package._instruments == ()


def test_what_lk_probe_instruments_and_what_only_tests_need_are_not_core_dependencies():
    core = {_canon(r.name) for r in _requirements(None)}
    optional = set(package.SUPPORTED) | {_canon(r.name) for r in _requirements("testing")}
    assert core & optional == set()


@lru_cache(maxsize=None)
def _closure(dist: str, extras: frozenset[str] = frozenset()) -> frozenset[str]:
    """``dist`` and every installed distribution it needs (markers evaluated here)."""
    found = {_canon(dist)}
    try:
        requires = metadata.requires(dist) or []
    except metadata.PackageNotFoundError:
        return frozenset(found)
    for line in requires:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
            found |= _closure(_canon(req.name), frozenset(req.extras))
    return frozenset(found)


def _allowed(*groups: str | None) -> set[str]:
    """What code may import when ``groups`` are installed: None is the core dependencies, a name in
    lk_probe.package.SUPPORTED one instrumented package (with what it brings), any other name an extra of lk_probe."""
    found: set[str] = set()
    for g in groups:
        for r in [Requirement(g)] if g in package.SUPPORTED else _requirements(g):
            found |= _closure(_canon(r.name), frozenset(r.extras))
    return found


# What each part of src/ may import from (paths relative to src/lk_probe, the first matching prefix counts). A part
# that instruments one package runs only where that package is installed (install() checks), so it may use what
# that package brings; everything else has only the core dependencies. A new module that imports one of the
# instrumented packages, or what they bring, needs its line here.
PARTS = {
    "testing/audio.py": (None, "testing", "livekit"),  # judges what an rtc.AudioStream subscriber hears
    "testing/": (None, "testing"),
    "pytest_plugin.py": (None, "testing"),
    "demo.py": (None, "testing", "livekit-agents"),  # runs a real agent worker against the double
    "waterfall.py": (None, "cli"),
    "_serve.py": (None, "cli"),  # lk-probe serve: aiohttp
    "_patches/worker.py": (None, "livekit-agents"),
    "_patches/job.py": (None, "livekit-agents"),
    "_patches/room.py": (None, "livekit"),
    "_patches/media.py": (None, "livekit", "livekit-agents"),  # a room's media phases; AgentSession.start
    "_rust/bridge.py": (None, "livekit"),
    "_patches/api.py": (None, "livekit-api"),
    "_livekit_api.py": (None, "livekit-api"),
    "_watch.py": (None, "livekit-api"),  # lk_probe.watch_dispatch: a livekit.api client of its own
    "_cli_dispatch.py": (None, "livekit-api"),  # lk-probe canary / watch
    "": (None,),
}


@lru_cache(maxsize=None)
def _owners(top: str) -> dict[str, set[str]]:
    """For the distributions that ship top-level package ``top``: distribution -> the module paths it ships."""
    owners: dict[str, set[str]] = {}
    for dist in set(metadata.packages_distributions().get(top, [])):
        paths = set()
        for f in metadata.files(dist) or ():
            parts = Path(str(f)).with_suffix("").parts
            paths |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        owners[_canon(dist)] = paths
    return owners


def _distribution(module: str) -> str | None:
    """The installed distribution that ships ``module`` (the deepest package path only one of them ships)."""
    owners = _owners(module.split(".")[0])
    parts = module.split(".")
    for depth in range(len(parts), 0, -1):
        shipping = [d for d, paths in owners.items() if ".".join(parts[:depth]) in paths]
        if len(shipping) == 1:
            return shipping[0]
    return None


def _third_party_imports(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules |= {f"{node.module}.{a.name}" for a in node.names}  # `from livekit import api`: livekit.api
    return {m for m in modules if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] != "lk_probe"}


def test_every_import_comes_from_what_its_part_declares():
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        groups = next(g for prefix, g in PARTS.items() if rel.startswith(prefix))
        allowed = _allowed(*groups)
        for module in sorted(_third_party_imports(path)):
            dist = _distribution(module)
            if dist is None or dist not in allowed:
                problems.append(f"{rel}: {module} (from {dist or 'no installed distribution'}) is not required by "
                                f"{' + '.join(g or 'the core dependencies' for g in groups)} (see PARTS)")
    assert not problems, "\n".join(problems)


def test_the_testing_extra_gives_the_plugin_the_double_and_the_cli():
    testing = {_canon(r.name) for r in _requirements("testing")}
    assert {"pytest", "rich"} <= testing
    assert _allowed("cli") <= _allowed("testing")

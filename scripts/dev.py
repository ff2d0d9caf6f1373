#!/usr/bin/env python3
"""Set up lk_probe's version sets and run the demo or the tests. Needs only Python 3.10+ (and Linux for real ICE).

    python3 scripts/dev.py demo              # set up the latest version set, run the demo (trace waterfall)
    python3 scripts/dev.py test              # the packaging checks, then every version set: the whole suite
    python3 scripts/dev.py test --set prod-1.4.6 -- -k job_trace   # one set, extra pytest arguments

Each version set gets its own virtual environment under .venvs/ (re-created only when its requirements or
pyproject.toml change), installed by uv (from PyPI, one wheel cache for all sets) or, without it, by pip. Each set's
run records its versions, totals and smoke-test outcomes; a run of a set's own subset (no extra pytest arguments)
updates .ci/matrix.json with it and re-renders the README's supported-versions table (scripts/matrix.py). Tests run
inside a private network namespace when this machine allows one (root, or unprivileged user namespaces): libwebrtc
ignores loopback interfaces, so real ICE between the Rust SDK and the server double needs a veth with a 127.x
address that exists only in that namespace. Without it, the tests that need real ICE are skipped with a clear
reason.

The packaging checks (``--set packaging``, run first) install lk_probe without extras into a fresh environment that
holds only livekit-api, as a dispatching backend has, and run tests/packaging against it with the latest set's
pytest, outside the network namespace: what that install pulled in, ``import lk_probe; lk_probe.install()`` there,
the extras, and a static check that src/ uses nothing newer than the oldest Python lk_probe supports.

Opt-in, never part of a plain ``test``: ``--set phoenix`` installs Arize Phoenix (a real trace backend) into its own
environment and runs tests/backends with the latest set: lk_probe's spans sent over OTLP to a Phoenix server on
loopback and read back through Phoenix's API. The install is large (about 850 MB, minutes) and Phoenix takes from
10 s to minutes to start on a busy machine, hence opt-in.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import runpy
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import matrix  # noqa: E402 - this directory's matrix.py (standard library only)

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".venvs"

# name -> (requirements installed on top of lk_probe[dev], pytest arguments). A requirement "--no-deps X" is installed
# afterwards without its dependencies; "--override X" replaces every other requirement on that distribution (a pin
# of the livekit-agents release that lies outside lk_probe's own supported range).
SMOKE = ["-m", "smoke"]
SETS: dict[str, tuple[list[str], list[str]]] = {
    # the latest livekit-agents 1.8 with the livekit it pins
    "latest": (["livekit-agents>=1.8,<1.9"], []),
    # what the production users in the reports run; 1.4.6 imports httpx without declaring it
    "prod-1.4.6": (["livekit-agents==1.4.6", "livekit==1.1.2", "httpx"], []),
    # the last livekit-agents that shuts its tracer provider down at job end (1.3–1.7): the end-to-end core tests
    "agents-1.7": (["livekit-agents==1.7.1"], ["tests/core"]),
    # the newest Rust engine: only the plain-rtc tests (livekit-agents 1.8 pins an older livekit)
    "rtc-1.2.0": (["livekit-agents>=1.8,<1.9", "--no-deps livekit==1.2.0"], ["-m", "rtc"]),
    # the compatibility matrix: the latest patch of every other livekit-agents minor with the livekit it pins, the
    # smoke tests only. livekit-agents 1.2 (the `Worker` API) pins no livekit: it runs on the newest, livekit 1.2.1,
    # which makes it the smoke set of livekit 1.2.1 for plain rtc as well. 1.2 – 1.5 import httpx without declaring it.
    "agents-1.2": (["livekit-agents==1.2.18", "livekit==1.2.1", "httpx"], SMOKE),
    "agents-1.3": (["livekit-agents==1.3.12", "--override livekit==1.0.23", "httpx"], SMOKE),
    "agents-1.5": (["livekit-agents==1.5.17", "httpx"], SMOKE),
    "agents-1.6": (["livekit-agents==1.6.10"], SMOKE),
}
PACKAGING = "packaging"
PACKAGING_TESTS = "tests/packaging"
PHOENIX = "phoenix"  # opt-in: a real third-party trace backend (tests/backends)
PHOENIX_REQUIREMENT = "arize-phoenix==20.26.1"


def run(cmd: list[str], **kw) -> int:
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, **kw)


UV = "uv==0.13.9"  # installs the version sets; several times faster than pip, and one wheel cache for all of them


@functools.lru_cache(maxsize=None)
def uv() -> list[str] | None:
    """The uv command (installed from PyPI into .venvs/.uv once), or None when it cannot be had (then pip installs)."""
    path = VENVS / ".uv"
    exe = path / "bin" / "uv"
    stamp = path / ".lk_probe-stamp"
    if not (exe.exists() and stamp.exists() and stamp.read_text() == UV):
        if path.exists():
            shutil.rmtree(path)
        venv.EnvBuilder(with_pip=True).create(path)
        if run([str(path / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                UV]) != 0:
            print("note: could not install uv; the version sets are installed with pip", flush=True)
            return None
        stamp.write_text(UV)
    return [str(exe), "pip", "install", "--quiet", "--cache-dir", str(VENVS / ".uv-cache")]


def build_venv(name: str, key: str, installs: Callable[[list[str], Path], list[list[str]]],
               use_uv: bool = True) -> Path:
    """.venvs/<name>, re-created when ``key`` or pyproject.toml changed; ``installs(installer, path)``: its install
    steps, ``installer`` being uv's ``pip install`` for this environment or else pip's (``use_uv=False``: pip)."""
    path = VENVS / name
    py = path / "bin" / "python"
    stamp = path / ".lk_probe-stamp"
    digest = hashlib.sha256((key + (ROOT / "pyproject.toml").read_text()).encode()).hexdigest()
    if py.exists() and stamp.exists() and stamp.read_text() == digest:
        return py
    if path.exists():
        shutil.rmtree(path)
    print(f"== setting up {name!r} in {path}", flush=True)
    fast = uv() if use_uv else None
    venv.EnvBuilder(with_pip=fast is None).create(path)
    if fast is not None:
        steps = installs(fast + ["--python", str(py)], path)
    else:
        pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        steps = [pip + ["--upgrade", "pip"], *installs(pip, path)]
    for step in steps:
        if run(step) != 0:
            sys.exit(f"setting up {name!r} failed")
    stamp.write_text(digest)
    return py


def ensure_venv(name: str) -> Path:
    reqs, _ = SETS[name]
    plain = [r for r in reqs if not r.startswith("--")]
    nodeps = [r.split(" ", 1)[1] for r in reqs if r.startswith("--no-deps ")]
    overrides = [r.split(" ", 1)[1] for r in reqs if r.startswith("--override ")]

    def installs(installer: list[str], path: Path) -> list[list[str]]:
        # one resolver run for lk_probe and the set's pins, so that OTel packages come from one release train
        first = installer + ["-e", f"{ROOT}[dev]", *plain]
        if overrides:
            (path / "overrides.txt").write_text("\n".join(overrides) + "\n")
            first += ["--override", str(path / "overrides.txt")]
        return [first] + ([installer + ["--no-deps", *nodeps]] if nodeps else [])

    if overrides and uv() is None:
        sys.exit(f"version set {name!r} needs uv (its requirements override lk_probe's own)")
    return build_venv(name, "\n".join(reqs), installs)


def ensure_dispatcher_venv() -> Path:
    """A dispatching backend's environment: livekit-api (in lk_probe's supported range), then ``pip install <repo>``
    without extras (not editable: what users get), its pip report in install-report.json. Rebuilt when src/ changes."""
    api = "livekit-api " + runpy.run_path(str(ROOT / "src" / "lk_probe" / "package.py"))["SUPPORTED"]["livekit-api"]
    src = sorted(p for p in (ROOT / "src").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    key = hashlib.sha256(b"".join(p.relative_to(ROOT).as_posix().encode() + p.read_bytes() for p in src)).hexdigest()

    def installs(pip: list[str], path: Path) -> list[list[str]]:
        return [pip + [api], pip + ["--report", str(path / "install-report.json"), str(ROOT)]]

    return build_venv("dispatcher", api + key, installs, use_uv=False)  # pip's --report: what the install pulled in


def cmd_packaging(pytest_args: list[str]) -> int:
    py = ensure_venv("latest")
    env = dict(os.environ, LK_PROBE_DISPATCHER_ENV=str(ensure_dispatcher_venv().parent.parent))
    print("== packaging checks", flush=True)
    return run([str(py), "-m", "pytest", "-p", "no:cacheprovider", "-q", PACKAGING_TESTS, *pytest_args], cwd=ROOT,
               env=env)


def cmd_phoenix(pytest_args: list[str]) -> int:
    py = ensure_venv("latest")
    phoenix = build_venv(PHOENIX, PHOENIX_REQUIREMENT, lambda pip, path: [pip + [PHOENIX_REQUIREMENT]])
    env = dict(os.environ, LK_PROBE_PHOENIX=str(phoenix.parent / "phoenix"))
    print("== third-party backend: Arize Phoenix", flush=True)
    return run([*netns_prefix(py), str(py), "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests/backends",
                *pytest_args], cwd=ROOT, env=env)


def netns_prefix(py: Path) -> list[str]:
    """Run inside a private network namespace when possible; else nothing (ICE tests then skip)."""
    probe = subprocess.run([str(py), "-m", "lk_probe.testing.netns", "--", "true"], capture_output=True, text=True)
    if probe.returncode == 0:
        return [str(py), "-m", "lk_probe.testing.netns", "--"]
    print(f"note: no private network namespace here ({probe.stdout.strip() or probe.stderr.strip()}); "
          "tests that need real ICE will be skipped", flush=True)
    return []


def cmd_test(args: argparse.Namespace) -> int:
    names = args.set or [PACKAGING, *SETS]
    results: list[tuple[str, int, float]] = []
    recorded = matrix.load()
    for name in names:
        t0 = time.monotonic()
        if name in (PACKAGING, PHOENIX):
            results.append((name, (cmd_packaging if name == PACKAGING else cmd_phoenix)(args.pytest),
                            time.monotonic() - t0))
            continue
        py = ensure_venv(name)
        _, extra = SETS[name]
        report = py.parent.parent / "matrix-report.json"
        report.unlink(missing_ok=True)
        cmd = [*netns_prefix(py), str(py), "-m", "pytest", "-p", "no:cacheprovider", "-q",
               f"--ignore={PACKAGING_TESTS}", *extra, *args.pytest]
        print(f"== tests on version set {name!r}", flush=True)
        code = run(cmd, cwd=ROOT, env=dict(os.environ, LK_PROBE_MATRIX_REPORT=str(report)))
        results.append((name, code, time.monotonic() - t0))
        if report.exists() and not args.pytest:  # what this set's own subset proved, for the README's table
            entry = json.loads(report.read_text())
            entry["subset"] = " ".join(extra) or "whole suite"
            recorded["sets"][name] = entry
    matrix.save(recorded)
    print("== summary", flush=True)
    for name, code, took in results:
        print(f"  {name}: {'ok' if code == 0 else f'FAILED (exit {code})'} ({took:.0f} s)", flush=True)
    if matrix.sync_readme(recorded):
        print(f"  README.md's supported-versions table now shows this run: commit it with "
              f"{matrix.MATRIX.relative_to(ROOT)}", flush=True)
    return 0 if all(code == 0 for _, code, _ in results) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    py = ensure_venv("latest")
    return run([*netns_prefix(py), str(py), "-m", "lk_probe.demo", *args.demo_args], cwd=ROOT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("test", help="run the test suite on every version set (or --set NAME ...)")
    t.add_argument("--set", action="append", choices=[PACKAGING, *SETS, PHOENIX],
                   help="only this version set, or the packaging checks, or the opt-in Phoenix backend test "
                        "(repeatable)")
    t.add_argument("pytest", nargs="*", help="extra pytest arguments (after --)")
    d = sub.add_parser("demo", help="set up and run the demo")
    d.add_argument("demo_args", nargs="*", help="arguments for python -m lk_probe.demo (after --)")
    args = ap.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return cmd_test(args) if args.cmd == "test" else cmd_demo(args)


if __name__ == "__main__":
    sys.exit(main())

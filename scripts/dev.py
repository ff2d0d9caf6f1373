#!/usr/bin/env python3
"""Set up lk_probe's version sets and run the demo or the tests. Needs only Python 3.10+ (and Linux for real ICE).

    python3 scripts/dev.py demo              # set up the latest version set, run the demo (trace waterfall)
    python3 scripts/dev.py test              # the packaging checks, then every version set: the whole suite
    python3 scripts/dev.py test --set prod-1.4.6 -- -k job_trace   # one set, extra pytest arguments

Each version set gets its own virtual environment under .venvs/ (re-created only when its requirements or
pyproject.toml change). Tests run inside a private network namespace when this machine allows one (root, or
unprivileged user namespaces): libwebrtc ignores loopback interfaces, so real ICE between the Rust SDK and the
server double needs a veth with a 127.x address that exists only in that namespace. Without it, the tests that need
real ICE are skipped with a clear reason.

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
import hashlib
import os
import runpy
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".venvs"

# name -> (pip requirements installed on top of lk_probe[dev], pytest arguments)
SETS: dict[str, tuple[list[str], list[str]]] = {
    # the latest livekit-agents 1.8 with the livekit it pins
    "latest": (["livekit-agents>=1.8,<1.9"], []),
    # what the production users in the reports run; 1.4.6 imports httpx without declaring it
    "prod-1.4.6": (["livekit-agents==1.4.6", "livekit==1.1.2", "httpx"], []),
    # the last livekit-agents that shuts its tracer provider down at job end (1.3–1.7): the end-to-end core tests
    "agents-1.7": (["livekit-agents==1.7.1"], ["tests/core"]),
    # the newest Rust engine: only the plain-rtc tests (livekit-agents 1.8 pins an older livekit)
    "rtc-1.2.0": (["livekit-agents>=1.8,<1.9", "--no-deps livekit==1.2.0"], ["-m", "rtc"]),
}
PACKAGING = "packaging"
PACKAGING_TESTS = "tests/packaging"
PHOENIX = "phoenix"  # opt-in: a real third-party trace backend (tests/backends)
PHOENIX_REQUIREMENT = "arize-phoenix==20.26.1"


def run(cmd: list[str], **kw) -> int:
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, **kw)


def build_venv(name: str, key: str, installs: Callable[[list[str], Path], list[list[str]]]) -> Path:
    """.venvs/<name>, re-created when ``key`` or pyproject.toml changed; ``installs(pip, path)``: its pip steps."""
    path = VENVS / name
    py = path / "bin" / "python"
    stamp = path / ".lk_probe-stamp"
    digest = hashlib.sha256((key + (ROOT / "pyproject.toml").read_text()).encode()).hexdigest()
    if py.exists() and stamp.exists() and stamp.read_text() == digest:
        return py
    if path.exists():
        shutil.rmtree(path)
    print(f"== setting up {name!r} in {path}", flush=True)
    venv.EnvBuilder(with_pip=True).create(path)
    pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    for step in [pip + ["--upgrade", "pip"], *installs(pip, path)]:
        if run(step) != 0:
            sys.exit(f"setting up {name!r} failed")
    stamp.write_text(digest)
    return py


def ensure_venv(name: str) -> Path:
    reqs, _ = SETS[name]
    plain = [r for r in reqs if not r.startswith("--no-deps ")]
    nodeps = [r.split(" ", 1)[1] for r in reqs if r.startswith("--no-deps ")]

    def installs(pip: list[str], path: Path) -> list[list[str]]:
        # one resolver run for lk_probe and the set's pins, so that OTel packages come from one release train
        return [pip + ["-e", f"{ROOT}[dev]", *plain]] + ([pip + ["--no-deps", *nodeps]] if nodeps else [])

    return build_venv(name, "\n".join(reqs), installs)


def ensure_dispatcher_venv() -> Path:
    """A dispatching backend's environment: livekit-api (in lk_probe's supported range), then ``pip install <repo>``
    without extras (not editable: what users get), its pip report in install-report.json. Rebuilt when src/ changes."""
    api = "livekit-api " + runpy.run_path(str(ROOT / "src" / "lk_probe" / "package.py"))["SUPPORTED"]["livekit-api"]
    src = sorted(p for p in (ROOT / "src").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    key = hashlib.sha256(b"".join(p.relative_to(ROOT).as_posix().encode() + p.read_bytes() for p in src)).hexdigest()

    def installs(pip: list[str], path: Path) -> list[list[str]]:
        return [pip + [api], pip + ["--report", str(path / "install-report.json"), str(ROOT)]]

    return build_venv("dispatcher", api + key, installs)


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
    results: list[tuple[str, int]] = []
    for name in names:
        if name in (PACKAGING, PHOENIX):
            results.append((name, (cmd_packaging if name == PACKAGING else cmd_phoenix)(args.pytest)))
            continue
        py = ensure_venv(name)
        _, extra = SETS[name]
        cmd = [*netns_prefix(py), str(py), "-m", "pytest", "-p", "no:cacheprovider", "-q",
               f"--ignore={PACKAGING_TESTS}", *extra, *args.pytest]
        print(f"== tests on version set {name!r}", flush=True)
        code = run(cmd, cwd=ROOT)
        results.append((name, code))
    print("== summary", flush=True)
    for name, code in results:
        print(f"  {name}: {'ok' if code == 0 else f'FAILED (exit {code})'}", flush=True)
    return 0 if all(code == 0 for _, code in results) else 1


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

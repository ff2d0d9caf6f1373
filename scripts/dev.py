#!/usr/bin/env python3
"""Set up lk_probe's version sets and run the demo or the tests. Needs only Python 3.10+ (and Linux for real ICE).

    python3 scripts/dev.py demo              # set up the latest version set, run the demo (trace waterfall)
    python3 scripts/dev.py test              # every version set: the whole suite
    python3 scripts/dev.py test --set prod-1.4.6 -- -k job_trace   # one set, extra pytest arguments

Each version set gets its own virtual environment under .venvs/ (re-created only when its requirements or
pyproject.toml change). Tests run inside a private network namespace when this machine allows one (root, or
unprivileged user namespaces): libwebrtc ignores loopback interfaces, so real ICE between the Rust SDK and the
server double needs a veth with a 127.x address that exists only in that namespace. Without it, the tests that need
real ICE are skipped with a clear reason.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

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


def run(cmd: list[str], **kw) -> int:
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, **kw)


def ensure_venv(name: str) -> Path:
    reqs, _ = SETS[name]
    path = VENVS / name
    py = path / "bin" / "python"
    stamp = path / ".lk_probe-stamp"
    digest = hashlib.sha256(("\n".join(reqs) + (ROOT / "pyproject.toml").read_text()).encode()).hexdigest()
    if py.exists() and stamp.exists() and stamp.read_text() == digest:
        return py
    if path.exists():
        shutil.rmtree(path)
    print(f"== setting up version set {name!r} in {path}", flush=True)
    venv.EnvBuilder(with_pip=True).create(path)
    pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    plain = [r for r in reqs if not r.startswith("--no-deps ")]
    nodeps = [r.split(" ", 1)[1] for r in reqs if r.startswith("--no-deps ")]
    # one resolver run for lk_probe and the set's pins, so that OTel packages come from one release train
    steps = [pip + ["--upgrade", "pip"], pip + ["-e", f"{ROOT}[dev]", *plain]]
    if nodeps:
        steps.append(pip + ["--no-deps", *nodeps])
    for step in steps:
        if run(step) != 0:
            sys.exit(f"setting up {name!r} failed")
    stamp.write_text(digest)
    return py


def netns_prefix(py: Path) -> list[str]:
    """Run inside a private network namespace when possible; else nothing (ICE tests then skip)."""
    probe = subprocess.run([str(py), "-m", "lk_probe.testing.netns", "--", "true"], capture_output=True, text=True)
    if probe.returncode == 0:
        return [str(py), "-m", "lk_probe.testing.netns", "--"]
    print(f"note: no private network namespace here ({probe.stdout.strip() or probe.stderr.strip()}); "
          "tests that need real ICE will be skipped", flush=True)
    return []


def cmd_test(args: argparse.Namespace) -> int:
    names = args.set or list(SETS)
    results: list[tuple[str, int]] = []
    for name in names:
        py = ensure_venv(name)
        _, extra = SETS[name]
        cmd = [*netns_prefix(py), str(py), "-m", "pytest", "-p", "no:cacheprovider", "-q", *extra, *args.pytest]
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
    t.add_argument("--set", action="append", choices=list(SETS), help="only this version set (repeatable)")
    t.add_argument("pytest", nargs="*", help="extra pytest arguments (after --)")
    d = sub.add_parser("demo", help="set up and run the demo")
    d.add_argument("demo_args", nargs="*", help="arguments for python -m lk_probe.demo (after --)")
    args = ap.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return cmd_test(args) if args.cmd == "test" else cmd_demo(args)


if __name__ == "__main__":
    sys.exit(main())

"""Profiles of a worker process, taken by benchmarks/_profile_site/sitecustomize.py, and their summary.

A worker started with :func:`env` profiles all its threads (CPU time, cProfile); :func:`zero` sets the zero after the
start-up, :func:`dump` writes the profile. :func:`summary` compares a worker with lk_probe against one without that
ran the same jobs: cProfile inflates Python-heavy code, so its figures are shares and "profiled ms", not real costs.
"""

from __future__ import annotations

import json
import marshal
import os
import signal
import time
from pathlib import Path

SITE = Path(__file__).resolve().parent / "_profile_site"
ZERO_SIGNAL = signal.SIGRTMIN + 1
DUMP_SIGNAL = signal.SIGRTMIN + 2


def env(out: Path) -> dict[str, str]:
    return {"LKP_PROFILE_OUT": str(out),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(SITE), os.environ.get("PYTHONPATH")]))}


def zero(pid: int) -> None:
    os.kill(pid, ZERO_SIGNAL)


def dump(pid: int, out: Path, timeout: float = 30) -> tuple[dict, dict[str, float]]:
    out.unlink(missing_ok=True)
    os.kill(pid, DUMP_SIGNAL)
    deadline = time.monotonic() + timeout
    while not out.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no profile from worker {pid}")
        time.sleep(0.1)
    stats = marshal.loads(out.read_bytes())
    own = str(SITE)
    stats = {f: v for f, v in stats.items() if not f[0].startswith(own) and not f[0].endswith("cProfile.py")}
    return stats, json.loads(Path(str(out) + ".threads.json").read_text())


def _short(path: str) -> str:
    if "/lk_probe/" in path:
        return "lk_probe/" + path.rsplit("/lk_probe/", 1)[1]
    for cut, prefix in (("site-packages/", ""), ("/src/", ""), ("/lib/python3.", "stdlib/")):
        if cut in path:
            rest = path.split(cut, 1)[1]
            return prefix + (rest.split("/", 1)[1] if prefix else rest)
    return path


def _where(func: tuple) -> str:
    path, line, name = func
    return name if path == "~" else f"{_short(path)}:{line}({name})"


def _package(func: tuple) -> str:
    """lk_probe/<module>, opentelemetry/<part>, the top package elsewhere, stdlib/<module>."""
    path = _short(func[0])
    if path.startswith("<frozen "):
        return "stdlib/" + path[8:-1].split(".")[0].lstrip("_")
    parts = path.split("/")
    if parts[0] in ("lk_probe", "opentelemetry", "stdlib"):
        return "/".join(parts[:2]).removesuffix(".py")
    return parts[0].removesuffix(".py")


def _own(stats: dict) -> dict[tuple, float]:
    """Own CPU per function, a builtin's charged to its callers (in proportion to what each caller spent in it)."""
    own: dict[tuple, float] = {}
    for f, (_, _, tt, _, callers) in stats.items():
        if f[0] != "~" or not callers:
            own[f] = own.get(f, 0.0) + tt
            continue
        total = sum(c[2] for c in callers.values()) or 1.0
        for caller, c in callers.items():
            own[caller] = own.get(caller, 0.0) + tt * c[2] / total
    return own


def summary(with_: tuple[dict, dict], without: tuple[dict, dict], jobs: int, top: int = 12) -> list[str]:
    (sw, tw), (so, to) = with_, without
    lines = [f"profile: {jobs} jobs per worker, both workers profiled (cProfile, CPU time; it inflates Python-heavy "
             "code, so read shares); figures per job"]
    broken = sum(1 for st in (sw, so) for v in st.values() if v[1] < 0)
    if broken:
        lines.append(f"  (profiles suspect: {broken} entries counted fewer calls at the dump than at the zero)")
    threads = sorted(set(tw) | set(to), key=lambda k: -(tw.get(k, 0.0) - to.get(k, 0.0)))
    lines.append("  threads, with − without (profiled ms): " + ", ".join(
        f"{k} {(tw.get(k, 0.0) - to.get(k, 0.0)) * 1000 / jobs:+.1f}" for k in threads
        if abs(tw.get(k, 0.0) - to.get(k, 0.0)) * 1000 / jobs >= 0.05))
    ow, oo = _own(sw), _own(so)
    diff = {f: ow.get(f, 0.0) - oo.get(f, 0.0) for f in set(ow) | set(oo)}
    grew = sum(d for d in diff.values() if d > 0)
    by_pkg: dict[str, float] = {}
    for f, d in diff.items():
        by_pkg[_package(f)] = by_pkg.get(_package(f), 0.0) + d
    lines.append(f"  own CPU by package, with − without ({grew * 1000 / jobs:.1f} profiled ms grew): " + ", ".join(
        f"{k} {d / grew * 100:.0f}%" for k, d in sorted(by_pkg.items(), key=lambda kv: -kv[1])[:top]
        if d / grew >= 0.01))
    lines.append("  top functions by own CPU (builtins charged to their callers), with − without:")
    for f, d in sorted(diff.items(), key=lambda kv: -kv[1])[:top]:
        calls = (sw.get(f, (0, 0))[1] - so.get(f, (0, 0))[1]) / jobs
        lines.append(f"    {d / grew * 100:5.1f}%  {d * 1000 / jobs:6.2f} ms  {calls:+8.1f} calls  {_where(f)}")
    ours = sorted(((v[3], v[1], f) for f, v in sw.items() if "lk_probe" in f[0]), reverse=True)[:top]
    lines.append("  lk_probe's functions by cumulative CPU in the worker with lk_probe:")
    for ct, n, f in ours:
        lines.append(f"    {ct * 1000 / jobs:6.2f} ms  {n / jobs:6.1f} calls  {_where(f)}")
    return lines

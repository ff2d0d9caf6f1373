"""What lk_probe adds to a job process's start-up, after livekit.agents is imported (the process imports that anyway).

    python benchmarks/job_startup.py [--runs 20]

Each run is a fresh interpreter that imports livekit.agents and its job-process module, then times, with and
without lk_probe (runs interleaved):

  import    ``import lk_probe``
  install   ``lk_probe.install()``
  prewarm   what lk_probe does in the job process's prewarm (``_patches.job._warm_up``: the provider, the span
            processors, the modules the first connect needs)

Under the ``spawn`` start method a job process pays all three; under ``forkserver`` (livekit-agents' default on
Linux) it pays only ``prewarm``: the forkserver imported and installed lk_probe once. Prints the medians (wall and
CPU) and the target (import + install + prewarm ≤ 50 ms), then ``python -X importtime``'s largest modules imported
after livekit.agents. Bytecode is cached in a temporary directory first, as for an installed package.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

CHILD = r"""
import json, sys, time
import livekit.agents
import livekit.agents.ipc.job_proc_lazy_main
print("-- livekit.agents imported --", file=sys.stderr, flush=True)
clock = (time.perf_counter, time.process_time)
marks = [tuple(c() for c in clock)]
n0 = len(sys.modules)
if sys.argv[1] == "with":
    import lk_probe
    marks.append(tuple(c() for c in clock))
    lk_probe.install()
    marks.append(tuple(c() for c in clock))
    from lk_probe._patches import job
    job._warm_up()
    marks.append(tuple(c() for c in clock))
else:
    marks += [tuple(c() for c in clock)] * 3
steps = {name: [(b[i] - a[i]) * 1000 for i in (0, 1)] for name, a, b in
         zip(("import", "install", "prewarm"), marks, marks[1:])}
steps["total"] = [(marks[-1][i] - marks[0][i]) * 1000 for i in (0, 1)]
steps["modules"] = len(sys.modules) - n0
print(json.dumps(steps))
"""


def _env(cache: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = cache
    # this checkout's src unless PYTHONPATH already names one
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), os.path.abspath(SRC)]))
    # a provider is built in the prewarm step: point it at loopback (nothing is exported: no span ends)
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "http://127.0.0.1:4318/v1/traces"
    env.pop("OTEL_SDK_DISABLED", None)
    return env


def run(mode: str, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *extra, "-c", CHILD, mode], env=env, capture_output=True, text=True,
                          check=True)


def importtime(env: dict[str, str], top: int) -> list[str]:
    err = run("with", env, "-X", "importtime").stderr.splitlines()
    # the lines after the last livekit.agents import are what lk_probe's import brings in
    start = err.index("-- livekit.agents imported --")
    rows = []
    for line in err[start + 1:]:
        parts = line.split("|")
        if line.startswith("import time:") and len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), int(parts[0].split(":")[1]), parts[2].strip()))
    rows.sort(reverse=True)
    return [f"{cum / 1000:7.1f} ms cumulative {own / 1000:6.1f} ms own  {name}" for cum, own, name in rows[:top]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20, help="runs per side (interleaved)")
    ap.add_argument("--top", type=int, default=12, help="modules listed from -X importtime")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        env = _env(cache)
        run("with", env)  # fills the bytecode cache
        res: dict[str, list[dict]] = {"with": [], "without": []}
        for i in range(args.runs):
            for mode in ("with", "without") if i % 2 == 0 else ("without", "with"):
                res[mode].append(json.loads(run(mode, env).stdout.strip().splitlines()[-1]))
        tops = importtime(env, args.top)
    load = os.getloadavg()
    print(f"job-process start-up after livekit.agents, {args.runs} runs per side, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (ms, median wall / CPU)")
    for step in ("import", "install", "prewarm", "total"):
        w = [r[step] for r in res["with"]]
        wo = [r[step] for r in res["without"]]
        print(f"  {step:8s} with {statistics.median(x[0] for x in w):7.1f} / {statistics.median(x[1] for x in w):7.1f}"
              f"   without {statistics.median(x[0] for x in wo):5.1f} / {statistics.median(x[1] for x in wo):5.1f}")
    total = statistics.median(r["total"][0] - o["total"][0] for r, o in zip(res["with"], res["without"]))
    pre = statistics.median(r["prewarm"][0] for r in res["with"])
    modules = statistics.median(r["modules"] for r in res["with"])
    print(f"lk_probe adds per job process: spawn (import + install + prewarm) {total:.1f} ms  (target ≤ 50 ms); "
          f"forkserver (prewarm only) {pre:.1f} ms; modules imported {modules:.0f}")
    print("largest imports after livekit.agents (python -X importtime, one run):")
    for line in tops:
        print("  " + line)


if __name__ == "__main__":
    main()

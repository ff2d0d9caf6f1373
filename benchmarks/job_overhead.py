"""What lk_probe costs a job, measured side by side in one run.

    python -m lk_probe.testing.netns -- python benchmarks/job_overhead.py [--rounds 3] [--jobs 10] [--profile-jobs 20]

Two real livekit-agents workers run the same agent file (tests/core/agents/probe_agent.py), one with
lk_probe.install() and one without, against one server double and one OTLP receiver; their jobs are dispatched
alternately (the order flips every job), in ``--rounds`` rounds of ``--jobs`` jobs per side. Printed, per round and
over all jobs:

* accept→connected (the request handler in the worker → ctx.connect() returned in the job process): the median and
  p95 of each side and their ratios (targets ≤ 1.02 and ≤ 1.10), with the spread of the per-round ratios;
* the worker process's CPU per job (its CPU over the round / jobs) with and without, and the difference (target
  ≤ 1 ms): with lk_probe the worker also pays its exports and background threads;
* the job process's CPU, whole process (fork from the forkserver → exit, so the prewarm and the job-end flush are in
  it), the part of it not on the Rust SDK's threads, and up to connected, with and without;
* the OTLP requests lk_probe's processes sent per job;
* then (``--profile-jobs``) two more workers, both under cProfile, run the same jobs: the threads and functions where
  the worker with lk_probe spends more CPU (see benchmarks/_profiles.py).

The machine's load average is printed: on a shared machine the absolute figures move, the ratios much less.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
import _profiles  # noqa: E402
from _common import need_netns  # noqa: E402

AGENT = Path(__file__).resolve().parent.parent / "tests" / "core" / "agents" / "probe_agent.py"
SIDES = ("with", "without")


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20, method="inclusive")[18] if len(xs) > 1 else xs[0]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Bench:
    def __init__(self, double, rx, tmp: Path) -> None:
        self.double, self.rx, self.tmp = double, rx, tmp
        self.workers: dict[str, object] = {}
        self.n = 0

    def start(self, name: str, lk_probe: bool, extra: dict[str, str]) -> None:
        from lk_probe.testing import AgentWorker

        env = {"LKP_MARKERS": str(self.tmp / f"{name}.jsonl"), "LKP_MODE": "connect", "LKP_EXIT_CPU": "1",
               "LKP_INSTALL_TIMES": "1" if lk_probe else "0", "OTEL_METRICS_EXPORTER": "none", "LKP_IDLE": "2",
               "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": self.rx.http_endpoint, **extra}
        (self.tmp / f"{name}.jsonl").touch()
        self.workers[name] = AgentWorker(AGENT, self.double, agent_name=f"bench-{name}", env=env).start()

    def job(self, name: str) -> None:
        from livekit import api

        self.n += 1
        room = f"{name}-{self.n}"

        async def dispatch() -> None:
            async with api.LiveKitAPI(url=self.double.http_url, api_key=self.double.api_key,
                                      api_secret=self.double.api_secret) as lk:
                await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name=f"bench-{name}",
                                                                                       room=room))

        asyncio.run(dispatch())
        self.double.events.wait_for_sync("job_status", lambda e: e.get("room") == room
                                         and e.get("status") == "JS_SUCCESS", timeout=60)

    def markers(self, name: str) -> list[dict]:
        return [json.loads(x) for x in (self.tmp / f"{name}.jsonl").read_text().splitlines()]

    def stop(self) -> None:
        for w in self.workers.values():
            w.stop()


def job_rows(rows: list[dict], job_ids: set[str]) -> list[dict]:
    """Per job: accept→connected, CPU at connected and at exit (job processes write "exit" as they end)."""
    by: dict[str, dict] = {}
    for r in rows:
        if r.get("job_id") in job_ids:
            by.setdefault(r["job_id"], {})[r["what"]] = r
    out = []
    for j, m in by.items():
        if "request" in m and "connected" in m:
            ex = m.get("exit")
            out.append({"lat": m["connected"]["t"] - m["request"]["t"], "cpu_connected": m["connected"]["cpu"],
                        "cpu_exit": ex["cpu"] if ex else None,
                        "cpu_python": ex["cpu"] - ex["native_cpu"] if ex and "native_cpu" in ex else None})
    return out


def ms(x: float) -> str:
    return f"{x * 1000:.1f}"


def spread(xs: list[float], fmt: str = "{:.3f}") -> str:
    return f"rounds {fmt.format(min(xs))}–{fmt.format(max(xs))}" if len(xs) > 1 else ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3, help="0: the profile pass only")
    ap.add_argument("--jobs", type=int, default=10, help="jobs per side per round")
    ap.add_argument("--profile-jobs", type=int, default=20, help="jobs per side of the profile pass (0: none)")
    ap.add_argument("--with-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the worker with lk_probe (e.g. LK_PROBE_RTC=false)")
    args = ap.parse_args()
    need_netns()
    from lk_probe.testing import LiveKitDouble
    from lk_probe.testing.otlp import OtlpReceiver

    extra = dict(kv.split("=", 1) for kv in args.with_env)
    double = LiveKitDouble().start_in_thread()
    rx = OtlpReceiver(lifetime=3600).start()
    bench = Bench(double, rx, Path(tempfile.mkdtemp()))
    print(f"load average at start: {load()}")
    try:
        for name in SIDES:
            bench.start(name, name == "with", extra if name == "with" else {})
        for w in bench.workers.values():
            w.wait_registered(90)
        for name in SIDES:  # one job each first: first-use costs are not what a job pays
            bench.job(name)
        rounds = []
        seen: dict[str, set[str]] = {n: {r["job_id"] for r in bench.markers(n) if "job_id" in r} for n in SIDES}
        for rnd in range(args.rounds):
            cpu0 = {n: cpu_of(bench.workers[n].proc.pid) for n in SIDES}
            req0 = len(rx.requests)
            for i in range(args.jobs):
                for name in SIDES if (rnd * args.jobs + i) % 2 == 0 else SIDES[::-1]:
                    bench.job(name)
            cpu1 = {n: cpu_of(bench.workers[n].proc.pid) for n in SIDES}
            requests = len(rx.requests) - req0
            res = {}
            for n in SIDES:
                rows = bench.markers(n)
                ids = {r["job_id"] for r in rows if "job_id" in r} - seen[n]
                seen[n] |= ids
                jobs = job_rows(rows, ids)
                if not jobs:
                    sys.exit(f"no job of the {n!r} worker connected; its output:\n{bench.workers[n].output[-3000:]}")
                res[n] = {"jobs": jobs, "worker_cpu": (cpu1[n] - cpu0[n]) / len(jobs)}
            res["requests"] = requests / len(res["with"]["jobs"])
            rounds.append(res)
            report_round(rnd + 1, res)
        if rounds:
            print(f"load average after the rounds: {load()}")
            report_all(rounds)
        if args.profile_jobs:
            profile(bench, args.profile_jobs, extra)
    finally:
        bench.stop()
        rx.stop()
        double.stop_thread()


def _lat(res: dict, n: str) -> list[float]:
    return [j["lat"] for j in res[n]["jobs"]]


def report_round(i: int, res: dict) -> None:
    w, o = _lat(res, "with"), _lat(res, "without")
    print(f"round {i}: accept→connected median {ms(statistics.median(w))} / {ms(statistics.median(o))} ms "
          f"({statistics.median(w) / statistics.median(o):.3f}), p95 {ms(p95(w))} / {ms(p95(o))} ms "
          f"({p95(w) / p95(o):.3f}); worker CPU per job {ms(res['with']['worker_cpu'])} / "
          f"{ms(res['without']['worker_cpu'])} ms; OTLP requests per job {res['requests']:.2f}; load {load()}")


def report_all(rounds: list[dict]) -> None:
    lat = {n: [x for r in rounds for x in _lat(r, n)] for n in SIDES}
    med = {n: statistics.median(lat[n]) for n in SIDES}
    q95 = {n: p95(lat[n]) for n in SIDES}
    med_r = [statistics.median(_lat(r, "with")) / statistics.median(_lat(r, "without")) for r in rounds]
    p95_r = [p95(_lat(r, "with")) / p95(_lat(r, "without")) for r in rounds]
    print(f"all rounds, {len(lat['with'])} / {len(lat['without'])} jobs with / without lk_probe:")
    print(f"  accept→connected median {ms(med['with'])} / {ms(med['without'])} ms: ratio "
          f"{med['with'] / med['without']:.3f} ({spread(med_r)})  (target ≤ 1.02)")
    print(f"  accept→connected p95    {ms(q95['with'])} / {ms(q95['without'])} ms: ratio "
          f"{q95['with'] / q95['without']:.3f} ({spread(p95_r)})  (target ≤ 1.10)")
    wc = {n: statistics.mean(r[n]["worker_cpu"] for r in rounds) for n in SIDES}
    wd = [r["with"]["worker_cpu"] - r["without"]["worker_cpu"] for r in rounds]
    print(f"  worker CPU per job      {ms(wc['with'])} / {ms(wc['without'])} ms: lk_probe adds "
          f"{ms(wc['with'] - wc['without'])} ms ({spread([x * 1000 for x in wd], '{:.1f}')} ms)  (target ≤ 1 ms)")
    for key, what in (("cpu_exit", "job-process CPU, whole"), ("cpu_python", "  of it Python threads"),
                      ("cpu_connected", "job-process CPU to connect")):
        jc = {n: [j[key] for r in rounds for j in r[n]["jobs"] if j[key] is not None] for n in SIDES}
        if all(jc.values()):
            m = {n: statistics.median(jc[n]) for n in SIDES}
            print(f"  {what:23s} {ms(m['with'])} / {ms(m['without'])} ms (medians): lk_probe adds "
                  f"{ms(m['with'] - m['without'])} ms")
    print(f"  OTLP requests per job   {statistics.mean(r['requests'] for r in rounds):.2f} "
          "(worker and job process together)")


def profile(bench: Bench, jobs: int, extra: dict[str, str]) -> None:
    outs = {n: bench.tmp / f"prof-{n}.prof" for n in SIDES}
    for n in SIDES:
        bench.start(f"prof-{n}", n == "with", {**(extra if n == "with" else {}), **_profiles.env(outs[n])})
    for n in SIDES:
        bench.workers[f"prof-{n}"].wait_registered(90)
    for n in SIDES:
        bench.job(f"prof-{n}")
    for n in SIDES:
        _profiles.zero(bench.workers[f"prof-{n}"].proc.pid)
    for i in range(jobs):
        for n in SIDES if i % 2 == 0 else SIDES[::-1]:
            bench.job(f"prof-{n}")
    got = {n: _profiles.dump(bench.workers[f"prof-{n}"].proc.pid, outs[n]) for n in SIDES}
    for err in bench.tmp.glob("*.err"):
        print(f"profiling harness error ({err.name}):\n{err.read_text()}")
    for line in _profiles.summary(got["with"], got["without"], jobs):
        print(line)


if __name__ == "__main__":
    main()

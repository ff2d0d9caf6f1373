"""Issue 3 / acceptance 6: what lk_probe costs a job, measured side by side in one run.

    python -m lk_probe.testing.netns -- python benchmarks/job_overhead.py [--jobs 10]

Two real livekit-agents workers run the same agent file (tests/core/agents/probe_agent.py), one with
lk_probe.install() and one without, against one server double; their jobs are dispatched alternately. Prints the
median accept→connected time of each and the ratio (target ≤ 1.02), and the CPU time per job (worker process share
+ job process) with and without lk_probe and the difference (target ≤ 1 ms; the job process figure includes the
process's own start-up, where lk_probe's imports land).
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
from _common import describe, need_netns  # noqa: E402

AGENT = Path(__file__).resolve().parent.parent / "tests" / "core" / "agents" / "probe_agent.py"


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--with-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the worker with lk_probe (e.g. LK_PROBE_RTC=false)")
    args = ap.parse_args()
    need_netns()
    from livekit import api

    from lk_probe.testing import AgentWorker, LiveKitDouble
    from lk_probe.testing.otlp import OtlpReceiver

    double = LiveKitDouble().start_in_thread()
    rx = OtlpReceiver().start()
    tmp = Path(tempfile.mkdtemp())
    workers = {}
    try:
        for name, times in (("with", "1"), ("without", "0")):
            env = {"LKP_MARKERS": str(tmp / f"{name}.jsonl"), "LKP_MODE": "connect", "LKP_INSTALL_TIMES": times,
                   "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": rx.http_endpoint, "OTEL_METRICS_EXPORTER": "none",
                   "LKP_IDLE": "2"}
            if name == "with":
                env.update(kv.split("=", 1) for kv in args.with_env)
            (tmp / f"{name}.jsonl").touch()
            workers[name] = AgentWorker(AGENT, double, agent_name=f"bench-{name}", env=env).start()
        for w in workers.values():
            w.wait_registered(90)
        cpu0 = {n: cpu_of(w.proc.pid) for n, w in workers.items()}

        async def dispatch(agent: str, room: str) -> None:
            async with api.LiveKitAPI(url=double.http_url, api_key=double.api_key,
                                      api_secret=double.api_secret) as lk:
                await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name=agent, room=room))

        for i in range(args.jobs):
            for name in ("with", "without") if i % 2 == 0 else ("without", "with"):
                asyncio.run(dispatch(f"bench-{name}", f"{name}-{i}"))
                double.events.wait_for_sync("job_status", lambda e, n=name, i=i: e.get("room") == f"{n}-{i}"
                                            and e.get("status") == "JS_SUCCESS", timeout=60)
        cpu1 = {n: cpu_of(w.proc.pid) for n, w in workers.items()}
        res = {}
        for name in ("with", "without"):
            rows = [json.loads(x) for x in (tmp / f"{name}.jsonl").read_text().splitlines()]
            if not any(r["what"] == "connected" for r in rows):
                sys.exit(f"no job of the {name!r} worker connected; its output:\n{workers[name].output[-3000:]}")
            req = {r["job_id"]: r["t"] for r in rows if r["what"] == "request"}
            con = {r["job_id"]: r for r in rows if r["what"] == "connected"}
            lat = [con[j]["t"] - req[j] for j in con if j in req]
            job_cpu = statistics.mean(r["cpu"] for r in con.values())
            per_job = (cpu1[name] - cpu0[name]) / max(len(con), 1) + job_cpu
            res[name] = (lat, per_job)
            print(f"{name:8s} lk_probe: accept→connected {describe(lat)}; CPU per job {per_job * 1000:.1f} ms "
                  f"(worker share {(cpu1[name] - cpu0[name]) / max(len(con), 1) * 1000:.1f} ms)")
        ratio = statistics.median(res["with"][0]) / statistics.median(res["without"][0])
        print(f"median accept→connected ratio with/without: {ratio:.3f}  (target ≤ 1.02)")
        print(f"CPU lk_probe adds per job: {(res['with'][1] - res['without'][1]) * 1000:.2f} ms  (target ≤ 1 ms)")
    finally:
        for w in workers.values():
            w.stop()
        rx.stop()
        double.stop_thread()


if __name__ == "__main__":
    main()

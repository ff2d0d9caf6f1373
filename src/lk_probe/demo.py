"""``python -m lk_probe.demo``: a real agent, a stalled join, and the trace that explains it.

Starts the lk_probe.testing server double, a real OTLP receiver and a real livekit-agents worker running
``examples/agent.py`` (``lk_probe.install()`` at its top), makes the double hang the first signal WebSocket upgrade
for 8 s — the stall behind the 8 s SIP-call delay in the user report — dispatches one job, and prints the job's trace
as a text waterfall. Real ICE needs the private network namespace that ``scripts/dev.py demo`` provides; on a
machine without one, ``--host-network`` lets the double accept the host's interfaces instead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agent.py"


def _dispatch(double, agent_name: str, room: str) -> None:
    from livekit import api

    async def go() -> None:
        async with api.LiveKitAPI(url=double.http_url, api_key=double.api_key, api_secret=double.api_secret) as lk:
            await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name=agent_name, room=room))

    asyncio.run(go())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lk_probe.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stall", type=float, default=8.0, help="seconds the first signal upgrade hangs (0: none)")
    ap.add_argument("--host-network", action="store_true",
                    help="no private network namespace: let ICE use this host's interfaces")
    ap.add_argument("--agent", default=str(EXAMPLE), help="the agent file to run (default: examples/agent.py)")
    args = ap.parse_args(argv)

    from lk_probe.testing import LiveKitDouble, netns
    from lk_probe.testing._worker import AgentWorker
    from lk_probe.testing.otlp import OtlpReceiver
    from lk_probe.waterfall import print_waterfall

    if not Path(args.agent).exists():
        print(f"demo: {args.agent} not found (run the demo from a checkout of lk_probe)", file=sys.stderr)
        return 2
    if not args.host_network and not netns.in_private_netns():
        print("demo: real ICE needs a private network namespace; run it as `python3 scripts/dev.py demo`, or pass "
              "--host-network to use this host's interfaces", file=sys.stderr)
        return 2

    double = LiveKitDouble(allow_non_loopback=args.host_network).start_in_thread()
    rx = OtlpReceiver(lifetime=300).start()
    worker = None
    try:
        if args.stall > 0:
            double.faults.add("signal_upgrade_delay", delay=args.stall, count=1)
        env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": rx.http_endpoint, "OTEL_SERVICE_NAME": "demo-agent",
               "OTEL_METRICS_EXPORTER": "none", "AGENT_NAME": "demo-agent", "LOAD_THRESHOLD": "inf"}
        print(f"• LiveKit server double on {double.url}; OTLP receiver on {rx.http_endpoint}")
        t0 = time.monotonic()
        worker = AgentWorker(args.agent, double, agent_name="demo-agent", env=env).start()
        worker.wait_registered(90)
        print(f"• a real livekit-agents worker registered after {time.monotonic() - t0:.1f} s")
        if args.stall > 0:
            print(f"• fault: the double holds the first signal WebSocket upgrade for {args.stall:.0f} s")
        print("• dispatching one job (livekit.api AgentDispatchService.CreateDispatch) …")
        _dispatch(double, "demo-agent", "demo-call")
        job = rx.wait_for_phase("job", timeout=120)
        time.sleep(0.5)  # the last spans of the job process follow the worker's
        spans = rx.spans().trace(job.trace_id)
        print()
        print_waterfall(spans)
        print()
        _explain(spans)
        return 0
    finally:
        if worker is not None:
            worker.stop()
        rx.stop()
        double.stop_thread()


def _explain(spans) -> None:
    attempts = spans.phases("rtc.attempt")
    connect = spans.named("room_connect") or spans.named("job.connect")
    if connect:
        c = connect[0]
        print(f"The agent's connect took {c.duration:.2f} s.", end=" ")
    failed = [a for a in attempts if a.error]
    if failed:
        a = failed[0]
        print(f"Attempt 1 failed after {a.duration:.2f} s ({a.attributes.get('error.type')}); "
              f"{len(attempts)} attempts in all.")
    else:
        print()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

"""An instrumented agent: the two lk_probe lines at the top are all a user adds.

Run it against LiveKit (or the lk_probe.testing double) like any agent:

    LIVEKIT_URL=... LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=... \
    OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 python examples/agent.py start
"""

import os

import lk_probe

lk_probe.install()  # worker, job processes and livekit.rtc.Room; spans go where OTEL_* says

from livekit.agents import JobContext, WorkerOptions, cli  # noqa: E402


async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect()  # lk_probe shows the signal WebSocket, join and ICE phases inside this call
    # ... your AgentSession would start here ...
    ctx.shutdown("example done")


if __name__ == "__main__":
    cli.run_app(WorkerOptions(
        entrypoint_fnc=entrypoint,
        agent_name=os.environ.get("AGENT_NAME", "example-agent"),
        num_idle_processes=int(os.environ.get("NUM_IDLE_PROCESSES", "1")),
        # livekit-agents' default is 0.7 of this machine's CPU; the demo and the tests share a busy 2-core machine
        load_threshold=float(os.environ.get("LOAD_THRESHOLD", "0.7")),
    ))

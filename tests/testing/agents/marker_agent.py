"""A tiny agent for the double's tests: writes JSON markers (one per line) to $LKP_MARKERS instead of talking.

Env: LKP_MARKERS (file to append markers to), LKP_AGENT_NAME (explicit-dispatch name, default ""),
LKP_LOAD (what load_fnc reports, default 0.0), LKP_LOAD_THRESHOLD (default 0.7), LKP_HOLD (seconds the entrypoint
stays in the job before it shuts the job down, default 0), LKP_REJECT=1 (the request_fnc rejects every job),
LKP_SHUTDOWN_TIMEOUT (shutdown_process_timeout, default 10), LKP_DRAIN_TIMEOUT (default 1).
Works with livekit-agents 1.4.6 and 1.8.9 (``cli.run_app(WorkerOptions(...))``, ``python marker_agent.py start``).
"""

import asyncio
import json
import os
import time

from livekit.agents import JobContext, JobRequest, WorkerOptions, cli

LOAD = float(os.environ.get("LKP_LOAD", "0.0"))


def mark(what: str, **data: object) -> None:
    line = json.dumps({"what": what, "pid": os.getpid(), "t": time.time(), **data})
    with open(os.environ["LKP_MARKERS"], "a") as f:
        f.write(line + "\n")


def load(*_: object) -> float:
    return LOAD


async def request(req: JobRequest) -> None:
    mark("request", job_id=req.job.id)
    if os.environ.get("LKP_REJECT") == "1":
        await req.reject()
    else:
        await req.accept()


async def entrypoint(ctx: JobContext) -> None:
    job = ctx.job
    mark("entrypoint", job_id=job.id, dispatch_id=job.dispatch_id, room=job.room.name, room_sid=job.room.sid,
         agent_name=job.agent_name, metadata=job.metadata, worker_id=job.state.worker_id,
         started_at=job.state.started_at, status=job.state.status)
    async def on_shutdown(reason: str) -> None:
        mark("shutdown", job_id=job.id, reason=reason)

    ctx.add_shutdown_callback(on_shutdown)
    hold = float(os.environ.get("LKP_HOLD", "0"))
    if hold:
        await asyncio.sleep(hold)
    # end the job properly (1.4.6 keeps a job that never connected alive until it is shut down)
    ctx.shutdown(reason="marker agent done")


if __name__ == "__main__":
    cli.run_app(WorkerOptions(
        entrypoint_fnc=entrypoint,
        request_fnc=request,
        agent_name=os.environ.get("LKP_AGENT_NAME", ""),
        num_idle_processes=1,
        load_fnc=load,
        load_threshold=float(os.environ.get("LKP_LOAD_THRESHOLD", "0.7")),
        port=0,
        initialize_process_timeout=20.0,
        drain_timeout=int(os.environ.get("LKP_DRAIN_TIMEOUT", "1")),
        shutdown_process_timeout=float(os.environ.get("LKP_SHUTDOWN_TIMEOUT", "10")),
    ))

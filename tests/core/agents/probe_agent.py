"""The agent lk_probe's own end-to-end tests run: lk_probe.install() at the top, as the README says.

Env: LKP_MARKERS (JSON-lines file for markers), LKP_AGENT_NAME, LKP_MODE (what the entrypoint does: "return",
"connect", "connect_hold", "kill" = SIGKILL itself, "hold", "raise", "loop_block", "connect_stuck"), LKP_REQUEST ("accept" | "reject" | "slow"),
LKP_LOAD / LKP_LOAD_THRESHOLD (worker load), LKP_IDLE (num_idle_processes), LKP_HOLD (seconds), LKP_EXECUTOR
("process" | "thread"), LKP_USER_PROVIDER=1 (the agent sets its own global SDK provider first), LKP_EXIT_CPU=1 (an
"exit" marker with the job process's CPU time as it exits), LKP_MODE_BY_ROOM (JSON {room name: mode}: that room's job
does that instead of LKP_MODE), LKP_PREWARM (seconds the prewarm function sleeps, default 0).
"""

import asyncio
import json
import os
import signal
import time

import lk_probe

if os.environ.get("LKP_USER_PROVIDER") == "1":
    # the user sets up their own SDK provider before importing livekit.agents (which 1.3–1.7 then shut down at job end)
    from opentelemetry import trace as _trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    _user_provider = TracerProvider()
    _user_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=200))
    _trace.set_tracer_provider(_user_provider)

# LKP_INSTALL_TIMES=0: a bare agent (benchmarks); LKP_INSTALL_IN_MAIN=1: install() only under __main__, so the
# job processes, which re-import this file as __mp_main__, never call it themselves
if os.environ.get("LKP_INSTALL_IN_MAIN") != "1":
    for _ in range(int(os.environ.get("LKP_INSTALL_TIMES", "1"))):
        lk_probe.install()

from livekit.agents import JobContext, JobExecutorType, JobRequest, WorkerOptions, cli  # noqa: E402

if os.environ.get("LKP_USER_PROVIDER") == "1":  # and hands it to livekit-agents, as LiveKit's docs show
    from livekit.agents.telemetry import set_tracer_provider

    set_tracer_provider(_user_provider)

MODE = os.environ.get("LKP_MODE", "return")
MODE_BY_ROOM: dict = json.loads(os.environ.get("LKP_MODE_BY_ROOM", "{}"))


def mark(what: str, **data: object) -> None:
    with open(os.environ["LKP_MARKERS"], "a") as f:
        f.write(json.dumps({"what": what, "pid": os.getpid(), "t": time.time(), **data}) + "\n")


async def request(req: JobRequest) -> None:
    from opentelemetry import trace

    trace.get_current_span().is_recording()  # user code using OTel inside the request handler must keep working
    mark("request", job_id=req.job.id)
    how = os.environ.get("LKP_REQUEST", "accept")
    if how == "reject":
        await req.reject()
        return
    if how == "slow":
        await asyncio.sleep(float(os.environ.get("LKP_HOLD", "1")))
    await req.accept()


def _rust_watchdog_line() -> None:
    # Stands in for the Rust SDK only: its 10 s watchdog needs a libwebrtc handler stuck for 10 s, which nothing here
    # can provoke. The line takes the exact path a real one takes (ffi_event_callback's logger call, same format).
    import logging

    from livekit.rtc import _ffi_client

    _ffi_client.logger.log(logging.ERROR, "%s:%s:%s - %s", "livekit::rtc_engine::rtc_session", 1071,
                           "livekit::rtc_engine::rtc_session", "signal_event taking too much time: Answer("
                           "SessionDescription { r#type: \"answer\", sdp: \"v=0\", id: 3, mid_to_track_id: {} })")


async def _block_the_loop_around_a_rust_watchdog_line() -> None:
    import threading

    # 1. a watchdog line arrives (on another thread, as Rust's do) while the loop is blocked for 0.8 s
    threading.Timer(0.2, _rust_watchdog_line).start()
    mark("block", t0=time.time())
    time.sleep(0.8)  # noqa: ASYNC251 - blocking the loop is the point
    mark("unblocked", t1=time.time())
    await asyncio.sleep(0.5)  # livekit-agents' loop monitor reports the block now
    # 2. a second line after the block was reported: the handler's 10 s window covers the block
    _rust_watchdog_line()
    await asyncio.sleep(0.2)


def _native_threads_cpu() -> float:
    """CPU time of this process's live threads that the Rust SDK started (it names them; Python's threads keep the
    process's name)."""
    def stat(task: str) -> tuple[str, float]:
        try:
            with open(f"/proc/self/task/{task}/stat") as f:
                raw = f.read()
        except OSError:  # the thread ended meanwhile
            return "", 0.0
        fields = raw.rsplit(")", 1)[1].split()
        return raw[raw.index("(") + 1:raw.rindex(")")], (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    name = stat(str(os.getpid()))[0]
    return sum(cpu for comm, cpu in map(stat, os.listdir("/proc/self/task")) if comm not in (name, ""))


def prewarm(proc: object) -> None:
    time.sleep(float(os.environ.get("LKP_PREWARM", "0")))


async def entrypoint(ctx: JobContext) -> None:
    mark("entrypoint", job_id=ctx.job.id)
    mode = MODE_BY_ROOM.get(ctx.job.room.name, MODE)  # this job's own
    if os.environ.get("LKP_EXIT_CPU") == "1":  # benchmarks: the job process's whole CPU time, read as it exits
        from multiprocessing import util

        util.Finalize(None, lambda j=ctx.job.id: mark("exit", job_id=j, cpu=time.process_time(),
                                                      native_cpu=_native_threads_cpu()), exitpriority=-100)
    if mode in ("connect", "connect_hold", "loop_block"):
        await ctx.connect()
        mark("connected", job_id=ctx.job.id, sid=ctx.room.local_participant.sid, cpu=time.process_time())
    if mode == "connect_stuck":  # the job ends while its connect is still pending (the double holds the upgrade)
        asyncio.ensure_future(ctx.connect())
        await asyncio.sleep(float(os.environ.get("LKP_HOLD", "1")))
        mark("giving_up", job_id=ctx.job.id)
    if mode == "loop_block":
        await _block_the_loop_around_a_rust_watchdog_line()
    if mode == "kill":
        mark("killing", job_id=ctx.job.id)
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "raise":
        raise RuntimeError("entrypoint failed on purpose")
    if mode in ("hold", "connect_hold"):
        await asyncio.sleep(float(os.environ.get("LKP_HOLD", "2")))
    ctx.shutdown("done")


if __name__ == "__main__":
    if os.environ.get("LKP_INSTALL_IN_MAIN") == "1":
        lk_probe.install()
    cli.run_app(WorkerOptions(
        entrypoint_fnc=entrypoint,
        request_fnc=request,
        prewarm_fnc=prewarm,
        agent_name=os.environ.get("LKP_AGENT_NAME", ""),
        num_idle_processes=int(os.environ.get("LKP_IDLE", "1")),
        load_fnc=lambda *_: float(os.environ.get("LKP_LOAD", "0.0")),
        load_threshold=float(os.environ.get("LKP_LOAD_THRESHOLD", "0.7")),
        port=0,
        initialize_process_timeout=20.0,
        job_executor_type=JobExecutorType.THREAD if os.environ.get("LKP_EXECUTOR") == "thread"
        else JobExecutorType.PROCESS,
    ))

"""An agent that listens to the caller: lk_probe.install() at the top, then the entrypoint connects, waits for the
caller's audio track, reads it (what it heard goes into a marker, judged on the samples) and starts an AgentSession.

Env: LKP_MARKERS (JSON-lines markers), LKP_AGENT_NAME, LKP_HOLD (seconds to stay in the room at the end). What the
entrypoint does is the room name's first word: "listen-…": hear the caller, then start a session; "broken-…": the
session's STT plugin fails as the session starts; anything else: connect and stay.
"""

import asyncio
import json
import os
import time

import lk_probe

lk_probe.install()

from livekit import rtc  # noqa: E402
from livekit.agents import Agent, AgentSession, JobContext, WorkerOptions, cli, stt  # noqa: E402


def mark(what: str, **data: object) -> None:
    with open(os.environ["LKP_MARKERS"], "a") as f:
        f.write(json.dumps({"what": what, "pid": os.getpid(), "t": time.time(), **data}) + "\n")


class BrokenSTT(stt.STT):
    """Stands in for a speech-to-text plugin whose start-up fails (a missing key, a model that will not load)."""

    def __init__(self) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))

    def prewarm(self) -> None:
        raise RuntimeError("the STT plugin failed to initialise")

    async def _recognize_impl(self, *args, **kwargs):  # never reached
        raise NotImplementedError


async def _caller_track(room: rtc.Room) -> rtc.RemoteAudioTrack:
    for p in room.remote_participants.values():
        for pub in p.track_publications.values():
            if pub.track is not None and pub.kind == rtc.TrackKind.KIND_AUDIO:
                return pub.track
    got: asyncio.Future = asyncio.get_running_loop().create_future()
    room.on("track_subscribed", lambda track, pub, p: got.done() or track.kind != rtc.TrackKind.KIND_AUDIO
            or got.set_result(track))
    return await asyncio.wait_for(got, 15)


async def entrypoint(ctx: JobContext) -> None:
    from lk_probe.testing import audio

    mode = ctx.job.room.name.split("-", 1)[0]
    await ctx.connect()
    mark("connected", job_id=ctx.job.id, identity=ctx.room.local_participant.identity)
    if mode == "listen":
        track = await _caller_track(ctx.room)
        heard = audio.tone(await audio.hear(track, 0.5, until_audible=3.0))
        mark("heard", job_id=ctx.job.id, hz=heard.hz, rms=heard.rms, track=track.sid)
    session = None
    if mode in ("listen", "broken"):
        session = AgentSession(stt=BrokenSTT()) if mode == "broken" else AgentSession()
        try:
            await session.start(agent=Agent(instructions="listen"), room=ctx.room)
            mark("session_started", job_id=ctx.job.id)
        except Exception as e:  # noqa: BLE001 - the trace must say so; the marker tells the test it happened
            mark("session_failed", job_id=ctx.job.id, error=type(e).__name__)
    await asyncio.sleep(float(os.environ.get("LKP_HOLD", "1.0")))
    if session is not None:
        await session.aclose()
    ctx.shutdown("done")


if __name__ == "__main__":
    # load 0: on a busy test machine the CPU-based default would mark the worker full between two jobs
    cli.run_app(WorkerOptions(entrypoint_fnc=entrypoint, agent_name=os.environ.get("LKP_AGENT_NAME", ""),
                              num_idle_processes=1, port=0, initialize_process_timeout=20.0,
                              load_fnc=lambda *_: 0.0))

"""Worker protocol (``/agent``) and agent dispatch of the LiveKit server double.

Wire: binary ``livekit.protocol.agent`` ``WorkerMessage`` / ``ServerMessage`` over a WebSocket whose upgrade carries a
JWT with ``video.agent=true``. The first server message is ``register`` (RegisterWorkerResponse). A dispatch
(CreateDispatch, automatic dispatch when a join creates a room, or the token's ``roomConfig.agents``) creates one
job per dispatch; the job is offered (AvailabilityRequest) to matching workers in turn, the accepting worker gets a
JobAssignment with a server-minted job token. A job nobody accepts is parked and offered again as soon as a worker
reports ``WS_AVAILABLE``.

What the double does not do (the real server does): namespaces / deployments as routing keys, JT_PUBLISHER jobs
per publisher, restart policies, job migration on worker loss (``migrate_job`` is recorded only).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web
from google.protobuf.message import DecodeError
from livekit.protocol import agent, agent_dispatch, models

from ._core import AuthError, bearer, mint_token, new_sid, room_proto, server_info, verify_token

if TYPE_CHECKING:
    from ._core import RoomState
    from ._server import LiveKitDouble

log = logging.getLogger("lk_probe.testing")

FAULTS = {
    "job_offer_delay": "delay the AvailabilityRequest of a new job by `delay` seconds (identity = agent name)",
    "assignment_delay": "delay the JobAssignment after the worker accepted by `delay` seconds (identity = agent name)",
    "assignment_never": "never send the JobAssignment after the worker accepted: the worker's 7.5 s assignment "
                        "timeout fires (identity = agent name)",
    "dispatch_phantom": "CreateDispatch succeeds and ListDispatch reports the job running, but no worker is ever "
                        "offered it (identity = agent name)",
    "agent_socket_drop": "close a worker's /agent socket `after` seconds (default 0) after it registered, with close "
                         "code `code` (default 1011); the worker reconnects (identity = agent name)",
    "agent_connect_refused": "answer a worker's /agent upgrade with HTTP `status` (default 503): each firing refuses "
                             "one connect attempt (`count` attempts)",
}

AVAILABILITY_TIMEOUT = 10.0  # how long the double waits for an AvailabilityResponse before trying the next worker
ASSIGNMENT_TIMEOUT_HINT = 7.5  # the worker's own timeout (livekit.agents.worker.ASSIGNMENT_TIMEOUT)


def enum_name(enum: Any, value: int) -> str:
    """``enum.Name(value)`` that survives unknown values (proto3 enums are open: a peer may send anything)."""
    try:
        return enum.Name(value)
    except ValueError:
        return f"UNKNOWN({value})"


async def sleep_at_least(seconds: float) -> None:
    """Sleep until ``seconds`` of wall-clock time (what events are stamped with) have passed; asyncio's timer may
    wake a hair early by its clock resolution."""
    deadline = time.time() + seconds
    while (left := deadline - time.time()) > 0:
        await asyncio.sleep(left)


def setup(double: "LiveKitDouble", app: web.Application) -> "AgentService":
    svc = AgentService(double)
    double.agent = svc
    double.register_faults(FAULTS)
    app.router.add_get("/agent", svc.handle_ws)
    double.add_room_hook(svc.on_room_created)
    double.add_stop_hook(svc.close)
    return svc


@dataclass(eq=False)
class WorkerConn:
    id: str
    ws: web.WebSocketResponse
    agent_name: str = ""
    namespace: str = ""
    type: int = agent.JT_ROOM
    version: str = ""
    permissions: models.ParticipantPermission | None = None
    status: int = agent.WS_AVAILABLE
    load: float = 0.0
    job_count: int = 0
    draining: bool = False
    registered: bool = False
    jobs: set[str] = field(default_factory=set)
    pending: dict[str, "asyncio.Future[agent.AvailabilityResponse]"] = field(default_factory=dict)

    async def send(self, msg: agent.ServerMessage) -> None:
        await self.ws.send_bytes(msg.SerializeToString())


@dataclass(eq=False)
class JobRecord:
    job: agent.Job
    dispatch: "DispatchRecord"
    status: str = "pending"  # pending, offered, parked, assigned, running, success, failed, terminated, phantom
    worker_id: str = ""
    identity: str = ""
    tried: set[str] = field(default_factory=set)
    unparked_by: str = ""
    unpark: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class DispatchRecord:
    id: str
    agent_name: str
    room: str
    metadata: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    source: str = "api"  # api, room_config, automatic, create_room
    created_at: int = field(default_factory=time.time_ns)
    deleted_at: int = 0
    jobs: list[JobRecord] = field(default_factory=list)

    def to_proto(self) -> agent_dispatch.AgentDispatch:
        d = agent_dispatch.AgentDispatch(id=self.id, agent_name=self.agent_name, room=self.room,
                                         metadata=self.metadata)
        if self.attributes and "attributes" in agent_dispatch.AgentDispatch.DESCRIPTOR.fields_by_name:
            d.attributes.update(self.attributes)
        d.state.created_at = self.created_at
        d.state.deleted_at = self.deleted_at
        for j in self.jobs:
            d.state.jobs.append(j.job)
        return d


class AgentService:
    """Registered workers, dispatches and jobs; all state lives on the double's loop."""

    def __init__(self, double: "LiveKitDouble") -> None:
        self.double = double
        self.events = double.events
        self.workers: dict[str, WorkerConn] = {}
        self.dispatches: dict[str, DispatchRecord] = {}
        self.jobs: dict[str, JobRecord] = {}
        self.parked: list[JobRecord] = []

    # ------------------------------------------------------------------------------------------- websocket
    async def handle_ws(self, request: web.Request) -> web.StreamResponse:
        remote = request.remote
        refused = self.double.faults.take("agent_connect_refused")
        if refused is not None:
            status = int(refused.params.get("status", 503))
            self.events.record("worker_refused", path=request.path, status=status, remote=remote)
            return web.Response(status=status, text=f"{status}: refused by the agent_connect_refused fault")
        token = bearer(request.headers, request.query)
        try:
            if not token:
                raise AuthError("missing Authorization: Bearer <token>")
            claims = verify_token(token, self.double.api_key, self.double.api_secret)
            if not (claims.get("video") or {}).get("agent"):
                raise AuthError("token lacks the video.agent grant needed for /agent")
        except AuthError as e:
            self.events.record("auth_rejected", path=request.path, reason=str(e), remote=remote)
            return web.Response(status=401, text=f"401: {e}")

        ws = web.WebSocketResponse(max_msg_size=self.double.max_message_size, autoping=True)
        await ws.prepare(request)
        w = WorkerConn(id=new_sid("AW_"), ws=ws)
        self.events.record("worker_connected", worker=w.id, remote=remote)
        close_reason = "worker closed the connection"
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    try:
                        wm = agent.WorkerMessage.FromString(msg.data)
                    except DecodeError as e:
                        await self._bad(w, f"malformed WorkerMessage protobuf ({len(msg.data)} bytes): {e}")
                        close_reason = "bad message"
                        break
                    try:
                        ok = await self._on_message(w, wm)
                    except (ConnectionError, RuntimeError) as e:  # the peer went away while we answered
                        close_reason = f"send failed: {e!r}"
                        break
                    except Exception as e:  # a message the double cannot handle must not go unnoticed
                        log.exception("LiveKit double: /agent message handling failed")
                        await self._bad(w, f"server error handling {wm.WhichOneof('message')}: {e!r}", code=1011)
                        close_reason = "server error"
                        break
                    if not ok:
                        close_reason = "bad message"
                        break
                elif msg.type == WSMsgType.TEXT:
                    await self._bad(w, "text frame on /agent: the worker protocol is binary protobuf", code=1003)
                    close_reason = "bad message"
                    break
                elif msg.type == WSMsgType.ERROR:
                    err = ws.exception()
                    self.events.record("bad_message", worker=w.id, reason=f"websocket error: {err!r}",
                                       close_code=ws.close_code)
                    close_reason = f"websocket error: {err!r}"
                    break
        finally:
            await self._worker_gone(w, close_reason)
        return ws

    async def _bad(self, w: WorkerConn, reason: str, code: int = 1007) -> None:
        """Record ``bad_message`` and close with ``code`` (1007 invalid payload, 1003 unsupported data) + reason."""
        self.events.record("bad_message", worker=w.id, agent_name=w.agent_name, reason=reason)
        await w.ws.close(code=code, message=reason[:120].encode())

    async def _on_message(self, w: WorkerConn, wm: agent.WorkerMessage) -> bool:
        which = wm.WhichOneof("message")
        if not w.registered and which != "register":
            await self._bad(w, f"first message must be register, got {which or 'an empty WorkerMessage'}")
            return False
        if which == "register":
            if w.registered:
                self.events.record("bad_message", worker=w.id, reason="second register ignored")
                return True
            await self._register(w, wm.register)
        elif which == "availability":
            r = wm.availability
            fut = w.pending.get(r.job_id)
            if fut is None or fut.done():
                self.events.record("unexpected_availability", worker=w.id, job=r.job_id, available=r.available)
            else:
                fut.set_result(r)
        elif which == "update_worker":
            await self._update_worker(w, wm.update_worker)
        elif which == "update_job":
            self._update_job(w, wm.update_job)
        elif which == "ping":
            pong = agent.ServerMessage(pong=agent.WorkerPong(last_timestamp=wm.ping.timestamp,
                                                             timestamp=int(time.time() * 1000)))
            await w.send(pong)
        elif which == "migrate_job":
            self.events.record("migrate_job", worker=w.id, jobs=list(wm.migrate_job.job_ids))
        elif which == "simulate_job":
            self.events.record("simulate_job", worker=w.id)
        else:
            self.events.record("bad_message", worker=w.id, reason="empty WorkerMessage (no known field set)")
        return True

    async def _register(self, w: WorkerConn, reg: agent.RegisterWorkerRequest) -> None:
        w.agent_name, w.namespace, w.type, w.version = reg.agent_name, reg.namespace, reg.type, reg.version
        w.permissions = models.ParticipantPermission()
        w.permissions.CopyFrom(reg.allowed_permissions)
        resp = agent.ServerMessage()
        resp.register.worker_id = w.id
        resp.register.server_info.CopyFrom(server_info(self.double))
        await w.send(resp)
        w.registered = True
        self.workers[w.id] = w
        self.events.record("worker_registered", worker=w.id, agent_name=w.agent_name,
                           type=enum_name(agent.JobType, w.type), version=w.version, namespace=w.namespace)
        drop = self.double.faults.take("agent_socket_drop", w.agent_name)
        if drop is not None:
            self.double.spawn(self._drop_later(w, float(drop.params.get("after", 0.0)),
                                               int(drop.params.get("code", 1011))), name=f"lkd-drop-{w.id}")
        self._unpark_for(w)

    async def _drop_later(self, w: WorkerConn, after: float, code: int) -> None:
        await sleep_at_least(after)
        await self.drop_worker(w.id, code=code)

    async def drop_worker(self, worker_id: str, *, code: int = 1011, reason: str = "dropped by the double") -> bool:
        """Close a registered worker's /agent socket (as a server restart or a network cut would); False when that
        worker is not connected."""
        w = self.workers.get(worker_id)
        if w is None or w.ws.closed:
            return False
        self.events.record("worker_dropped", worker=w.id, agent_name=w.agent_name, code=code, reason=reason)
        await w.ws.close(code=code, message=reason.encode()[:120])
        return True

    async def _update_worker(self, w: WorkerConn, u: agent.UpdateWorkerStatus) -> None:
        if u.HasField("status"):
            w.status = u.status
        w.load, w.job_count, w.draining = u.load, u.job_count, u.draining
        self.events.record("worker_status", worker=w.id, agent_name=w.agent_name,
                           status=enum_name(agent.WorkerStatus, w.status), load=u.load, job_count=u.job_count,
                           draining=u.draining)
        if w.status == agent.WS_AVAILABLE and not w.draining:
            self._unpark_for(w)

    def _update_job(self, w: WorkerConn, u: agent.UpdateJobStatus) -> None:
        status = enum_name(agent.JobStatus, u.status)
        rec = self.jobs.get(u.job_id)
        self.events.record("job_status", job=u.job_id, worker=w.id, status=status, error=u.error,
                           room=rec.dispatch.room if rec else None,
                           dispatch=rec.dispatch.id if rec else None)
        if rec is None:
            return
        st = rec.job.state
        st.status = u.status
        st.error = u.error
        st.updated_at = time.time_ns()
        if u.status in (agent.JS_SUCCESS, agent.JS_FAILED):
            st.ended_at = time.time_ns()
            rec.status = "success" if u.status == agent.JS_SUCCESS else "failed"
            w.jobs.discard(rec.job.id)
        elif u.status == agent.JS_RUNNING:
            rec.status = "running"

    async def _worker_gone(self, w: WorkerConn, reason: str) -> None:
        self.workers.pop(w.id, None)
        for fut in w.pending.values():
            if not fut.done():
                fut.cancel()
        if not w.ws.closed:
            await w.ws.close()
        self.events.record("worker_disconnected", worker=w.id, agent_name=w.agent_name, reason=reason,
                           close_code=w.ws.close_code, jobs=sorted(w.jobs))

    async def close(self) -> None:
        for w in list(self.workers.values()):
            await w.ws.close(code=1001, message=b"server shutting down")

    # ------------------------------------------------------------------------------------------- dispatch
    def on_room_created(self, room: "RoomState", created_by: str, room_config: dict[str, Any] | None) -> None:
        if room.agents:
            for a in room.agents:
                self.create_dispatch(room.name, a.get("agentName", ""), a.get("metadata", ""),
                                     attributes=a.get("attributes") or {},
                                     source="room_config" if created_by == "join" else "create_room")
        elif created_by == "join":
            self.create_dispatch(room.name, "", "", source="automatic")

    def create_dispatch(self, room: str, agent_name: str, metadata: str = "", *,
                        attributes: dict[str, str] | None = None, source: str = "api") -> DispatchRecord:
        """Create a dispatch and its job (on the loop); the job is offered to workers asynchronously."""
        if room not in self.double.rooms:
            self.double.ensure_room(room, created_by="api")
        d = DispatchRecord(id=new_sid("AD_"), agent_name=agent_name, room=room, metadata=metadata,
                           attributes=dict(attributes or {}), source=source)
        self.dispatches[d.id] = d
        rec = JobRecord(job=self._new_job(d), dispatch=d)
        d.jobs.append(rec)
        self.jobs[rec.job.id] = rec
        phantom = self.double.faults.take("dispatch_phantom", agent_name)
        self.events.record("dispatch_created", dispatch=d.id, job=rec.job.id, room=room, agent_name=agent_name,
                           source=source, phantom=phantom is not None)
        if phantom is not None:
            rec.status = "phantom"
            st = rec.job.state
            st.status, st.started_at, st.updated_at = agent.JS_RUNNING, time.time_ns(), time.time_ns()
        else:
            self.double.spawn(self._run_job(rec), name=f"lkd-job-{rec.job.id}")
        return d

    def _new_job(self, d: DispatchRecord) -> agent.Job:
        room = self.double.rooms[d.room]
        job = agent.Job(id=new_sid("AJ_"), dispatch_id=d.id, type=agent.JT_ROOM, agent_name=d.agent_name,
                        metadata=d.metadata)
        job.room.CopyFrom(room_proto(room))
        if d.attributes and "attributes" in agent.Job.DESCRIPTOR.fields_by_name:
            job.attributes.update(d.attributes)
        job.state.status = agent.JS_PENDING
        return job

    def _candidates(self, rec: JobRecord) -> list[WorkerConn]:
        ws = [w for w in self.workers.values()
              if w.registered and w.agent_name == rec.job.agent_name and w.type == agent.JT_ROOM
              and not w.draining and w.id not in rec.tried and not w.ws.closed]
        # available workers first, least loaded first; full workers are still asked (their own load gate answers,
        # as when the server's view of the load is stale)
        return sorted(ws, key=lambda w: (w.status != agent.WS_AVAILABLE, w.load))

    async def _run_job(self, rec: JobRecord) -> None:
        job_id, agent_name = rec.job.id, rec.job.agent_name
        delay = self.double.faults.take("job_offer_delay", agent_name)
        if delay is not None:
            await sleep_at_least(float(delay.params.get("delay", 1.0)))
        while rec.status in ("pending", "offered", "parked"):
            if rec.dispatch.deleted_at:
                return
            cands = self._candidates(rec)
            if not cands:
                rec.status = "parked"
                rec.unpark.clear()
                self.parked.append(rec)
                self.events.record("job_parked", job=job_id, dispatch=rec.dispatch.id, room=rec.dispatch.room,
                                   agent_name=agent_name, tried=sorted(rec.tried))
                await rec.unpark.wait()
                if rec.status != "parked":
                    return
                if rec in self.parked:
                    self.parked.remove(rec)
                self.events.record("job_unparked", job=job_id, dispatch=rec.dispatch.id, room=rec.dispatch.room,
                                   agent_name=agent_name, worker=rec.unparked_by)
                rec.status = "pending"
                rec.tried.clear()
                continue
            w = cands[0]
            rec.tried.add(w.id)
            if await self._offer(rec, w):
                return

    def _unpark_for(self, w: WorkerConn) -> None:
        for rec in list(self.parked):
            if rec.job.agent_name == w.agent_name and w.type == agent.JT_ROOM:
                rec.unparked_by = w.id
                rec.unpark.set()

    async def _offer(self, rec: JobRecord, w: WorkerConn) -> bool:
        """Offer ``rec`` to ``w``; True when the job is settled (assigned, withheld or terminated)."""
        job = rec.job
        st = job.state
        st.status, st.worker_id = agent.JS_RUNNING, w.id
        st.started_at = st.updated_at = time.time_ns()
        rec.status = "offered"
        fut: asyncio.Future[agent.AvailabilityResponse] = asyncio.get_running_loop().create_future()
        w.pending[job.id] = fut
        try:
            try:
                await w.send(agent.ServerMessage(availability=agent.AvailabilityRequest(job=job)))
            except (ConnectionError, RuntimeError) as e:
                self.events.record("job_offer_failed", job=job.id, worker=w.id, error=repr(e))
                return False
            self.events.record("job_offered", job=job.id, dispatch=rec.dispatch.id, worker=w.id,
                               room=rec.dispatch.room, room_sid=job.room.sid, agent_name=job.agent_name)
            try:
                resp = await asyncio.wait_for(fut, AVAILABILITY_TIMEOUT)
            except asyncio.TimeoutError:
                self.events.record("job_offer_timeout", job=job.id, worker=w.id, timeout=AVAILABILITY_TIMEOUT)
                return False
            except asyncio.CancelledError:
                if w.ws.closed and not self.double._stopping:  # the worker went away mid-offer
                    self.events.record("job_offer_failed", job=job.id, worker=w.id, error="worker disconnected")
                    return False
                raise
        finally:
            w.pending.pop(job.id, None)
        identity = resp.participant_identity or f"agent-{job.id}"
        self.events.record("job_availability", job=job.id, worker=w.id, available=resp.available,
                           identity=identity if resp.available else resp.participant_identity,
                           terminate=resp.terminate, room=rec.dispatch.room)
        if not resp.available:
            if resp.terminate:
                self._set_terminated(rec, "rejected with terminate=True")
                return True
            st.worker_id = ""
            return False

        rec.identity = identity
        st.participant_identity = identity
        delay = self.double.faults.take("assignment_delay", job.agent_name)
        if delay is not None:
            await sleep_at_least(float(delay.params.get("delay", 1.0)))
        if self.double.faults.take("assignment_never", job.agent_name) is not None:
            rec.status = "withheld"
            self.events.record("assignment_withheld", job=job.id, worker=w.id, room=rec.dispatch.room)
            return True
        token = self.job_token(rec, resp, w)
        try:
            await w.send(agent.ServerMessage(assignment=agent.JobAssignment(job=job, token=token, url="")))
        except (ConnectionError, RuntimeError) as e:
            self.events.record("job_offer_failed", job=job.id, worker=w.id, error=repr(e))
            return False
        rec.status, rec.worker_id = "assigned", w.id
        w.jobs.add(job.id)
        self.events.record("job_assigned", job=job.id, dispatch=rec.dispatch.id, worker=w.id,
                           room=rec.dispatch.room, room_sid=job.room.sid, identity=identity)
        return True

    def job_token(self, rec: JobRecord, resp: agent.AvailabilityResponse, w: WorkerConn) -> str:
        video: dict[str, Any] = {"roomJoin": True, "room": rec.dispatch.room, "agent": True}
        p = w.permissions
        if p is not None:
            video.update(canPublish=p.can_publish, canSubscribe=p.can_subscribe, canPublishData=p.can_publish_data,
                         canUpdateOwnMetadata=p.can_update_metadata, hidden=p.hidden)
            if p.can_publish_sources:
                video["canPublishSources"] = [enum_name(models.TrackSource, s).lower() for s in p.can_publish_sources]
        attrs = dict(resp.participant_attributes)
        return mint_token(self.double.api_key, self.double.api_secret, identity=rec.identity,
                          name=resp.participant_name, video=video, kind="agent",
                          metadata=resp.participant_metadata, attributes=attrs or None, ttl=6 * 3600)

    def _set_terminated(self, rec: JobRecord, reason: str) -> None:
        rec.status = "terminated"
        st = rec.job.state
        st.status = agent.JS_FAILED if reason.startswith("rejected") else agent.JS_SUCCESS
        st.ended_at = st.updated_at = time.time_ns()
        if rec in self.parked:
            self.parked.remove(rec)
        rec.unpark.set()
        self.events.record("job_terminated", job=rec.job.id, dispatch=rec.dispatch.id, worker=rec.worker_id,
                           room=rec.dispatch.room, reason=reason)

    async def terminate_job(self, job_id: str, reason: str = "terminated by test") -> bool:
        """Send JobTermination to the worker running ``job_id`` (or drop it if it was not assigned yet)."""
        rec = self.jobs.get(job_id)
        if rec is None:
            return False
        w = self.workers.get(rec.worker_id) if rec.status in ("assigned", "running") else None
        if w is not None and not w.ws.closed:
            await w.send(agent.ServerMessage(termination=agent.JobTermination(job_id=job_id)))
            w.jobs.discard(job_id)
        self._set_terminated(rec, reason)
        return True

    async def delete_dispatch(self, dispatch_id: str) -> DispatchRecord | None:
        d = self.dispatches.pop(dispatch_id, None)
        if d is None:
            return None
        d.deleted_at = time.time_ns()
        for rec in d.jobs:
            if rec.status not in ("success", "failed", "terminated"):
                await self.terminate_job(rec.job.id, reason="dispatch deleted")
        self.events.record("dispatch_deleted", dispatch=d.id, room=d.room, agent_name=d.agent_name)
        return d

    async def room_deleted(self, room: str) -> None:
        for d in [d for d in self.dispatches.values() if d.room == room]:
            await self.delete_dispatch(d.id)

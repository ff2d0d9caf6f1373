"""``lk-probe canary`` and ``lk-probe watch``: the dispatching side from the command line.

``canary --agent NAME [--room R] [--timeout S]`` dispatches a job into a scratch room (or ``--room``), follows it
with the dispatch watch, prints each phase with its time, cleans up (deletes the dispatch, and the scratch room) and
exits 0 when the agent joined, 1 when it did not, 2 on bad configuration (missing or bad LIVEKIT_URL /
LIVEKIT_API_KEY / LIVEKIT_API_SECRET, credentials the server refuses, a server that cannot be reached).

``watch --room R [--dispatch AD_…] [--agent NAME] [--timeout S]`` follows a dispatch something else made (the
newest one in the room, of ``--agent`` if given, when ``--dispatch`` is not), with the same outcomes and exit codes.

Both export their spans like any lk_probe process (``OTEL_*`` variables) and print one line per phase; a failure is
one clear line, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from typing import Any, Callable

OK, NOT_JOINED, BAD_CONFIG = 0, 1, 2
# watch outcomes that mean the configuration (URL, credentials, grants) is wrong, not the agent
_CONFIG_OUTCOMES = ("api_error", "unreachable")


class ConfigError(Exception):
    """Bad configuration: printed as one line, exit code 2."""


def register(sub: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add the subcommands to ``lk-probe``'s subparsers; returns their handlers by name."""
    canary = sub.add_parser("canary", help="dispatch an agent into a scratch room and report whether it joined")
    canary.add_argument("--agent", required=True, help="the agent name to dispatch")
    canary.add_argument("--room", help="the room (default: a scratch room lk-probe-canary-…, deleted afterwards)")
    canary.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the join (default 30)")
    canary.add_argument("--metadata", default="", help="job metadata")
    watch = sub.add_parser("watch", help="follow a dispatch made elsewhere until its agent joined")
    watch.add_argument("--room", required=True)
    watch.add_argument("--dispatch", help="the dispatch id (AD_…); default: the room's newest dispatch")
    watch.add_argument("--agent", help="with no --dispatch: the newest dispatch of this agent")
    watch.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the join (default 30)")
    return {"canary": canary_main, "watch": watch_main}


def _env() -> tuple[str, str, str]:
    url, key, secret = (os.environ.get(k, "").strip() for k in ("LIVEKIT_URL", "LIVEKIT_API_KEY",
                                                                 "LIVEKIT_API_SECRET"))
    missing = [k for k, v in (("LIVEKIT_URL", url), ("LIVEKIT_API_KEY", key), ("LIVEKIT_API_SECRET", secret)) if not v]
    if missing:
        raise ConfigError(f"set {', '.join(missing)}")
    if not url.startswith(("ws://", "wss://", "http://", "https://")):
        raise ConfigError(f"LIVEKIT_URL must start with ws://, wss://, http:// or https:// (got {url!r})")
    return url, key, secret


def _install() -> None:
    import lk_probe

    lk_probe.install(worker=False, job_process=False, rtc=False, dispatch_watch=0)


def _print(line: str) -> None:
    print(line, flush=True)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _config_line(e: BaseException, url: str) -> str:
    from ._livekit_api import classify

    error_type, status = classify(e)
    if error_type in ("unauthenticated", "permission_denied"):
        return (f"the server at {url} refused the credentials ({error_type}): check LIVEKIT_API_KEY / "
                "LIVEKIT_API_SECRET")
    if status is None:
        return f"cannot reach the LiveKit API at {url} ({error_type}: {e})"
    return f"the LiveKit API at {url} answered {status} {error_type}: {getattr(e, 'message', '') or e}"


def _report(r: Any) -> int:
    detail = ", ".join(x for x in (
        f"dispatch {r.dispatch_id}" if r.dispatch_id else "",
        f"job {r.job_id}" if r.job_id else "",
        f"job state {r.job_state}" if r.job_state else "",
        f"agent {r.identity}" if r.identity and r.joined else "",
        f"{r.polls} looks, {r.api_calls} API calls") if x)
    took = r.joined_after_s if r.joined_after_s is not None else r.elapsed_s
    _print(f"dispatch.wait    {_ms(took):>9}  {r.outcome}  ({detail})")
    if r.message and not r.joined:
        _print(f"  {r.message}")
    if r.joined:
        return OK
    return BAD_CONFIG if r.outcome in _CONFIG_OUTCOMES else NOT_JOINED


async def _canary(args: argparse.Namespace) -> int:
    from livekit import api

    from . import _watch

    url, key, secret = _env()
    scratch = not args.room
    room = args.room or f"lk-probe-canary-{uuid.uuid4().hex[:8]}"
    async with api.LiveKitAPI(url=url, api_key=key, api_secret=secret,
                              timeout=__import__("aiohttp").ClientTimeout(total=10)) as lk:
        t0 = time.time_ns()
        try:
            if scratch:
                await lk.room.create_room(api.CreateRoomRequest(name=room, empty_timeout=max(int(args.timeout), 30)))
            d = await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
                agent_name=args.agent, room=room, metadata=args.metadata))
        except Exception as e:  # noqa: BLE001 - one clear line
            raise ConfigError(_config_line(e, url)) from None
        _print(f"dispatch.create  {_ms((time.time_ns() - t0) / 1e9):>9}  ok  (dispatch {d.id}, agent {args.agent!r}, "
               f"room {room!r})")
        try:
            task = _watch.start(_watch.Creds(url, key, secret), room, dispatch_id=d.id, agent_name=args.agent,
                                bound=args.timeout, t0=t0, parent=_dispatch_context(d.id), source="canary")
            if task is None:
                raise ConfigError("the watch could not start")
            code = _report(await task)
        finally:
            await _cleanup(lk, d.id, room, scratch)
    return code


def _dispatch_context(dispatch_id: str) -> Any:
    """The context of this process's ``dispatch.create`` span (its ids derive from the dispatch id)."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    from ._ids import dispatch_span_id_for, dispatch_trace_id_for

    sc = SpanContext(dispatch_trace_id_for(dispatch_id), dispatch_span_id_for(dispatch_id), is_remote=False,
                     trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(sc))


async def _cleanup(lk: Any, dispatch_id: str, room: str, scratch: bool) -> None:
    from livekit import api

    t = time.monotonic()
    try:
        await lk.agent_dispatch.delete_dispatch(dispatch_id, room)
        if scratch:
            await lk.room.delete_room(api.DeleteRoomRequest(room=room))
        _print(f"cleanup          {_ms(time.monotonic() - t):>9}  ok  (deleted the dispatch"
               f"{' and the scratch room' if scratch else ''})")
    except Exception as e:  # noqa: BLE001 - the room may be gone already; say so and go on
        _print(f"cleanup          {_ms(time.monotonic() - t):>9}  incomplete  ({e})")


async def _watch_cmd(args: argparse.Namespace) -> int:
    from . import _watch

    url, key, secret = _env()
    task = _watch.start(_watch.Creds(url, key, secret), args.room, dispatch_id=args.dispatch,
                        agent_name=args.agent, bound=args.timeout, source="watch")
    if task is None:
        raise ConfigError("the watch could not start")
    return _report(await task)


def _run(fn: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    try:
        _env()
        _install()
        code = asyncio.run(fn(args))
    except ConfigError as e:
        print(f"lk-probe {args.command}: {e}", file=sys.stderr)
        code = BAD_CONFIG
    except KeyboardInterrupt:
        code = NOT_JOINED
    finally:
        _flush()
    return code


def _flush() -> None:
    import lk_probe

    if lk_probe.installed():
        lk_probe.flush(3.0)


def canary_main(args: argparse.Namespace) -> int:
    return _run(_canary, args)


def watch_main(args: argparse.Namespace) -> int:
    return _run(_watch_cmd, args)

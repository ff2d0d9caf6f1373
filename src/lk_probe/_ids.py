"""One trace per dispatch (or per job): ids derived from LiveKit's ids, so the dispatcher, the worker and the job
process agree without talking and without anything extra on the wire.

A job with a dispatch id (explicit dispatch: CreateDispatch, CreateRoom's ``agents``, a token's room config) is in
the trace derived from its dispatch id, which the dispatcher knows as soon as CreateDispatch answers, so its
``dispatch.create`` span and the watch's ``dispatch.wait`` sit in the same trace as the worker's and the job's spans.
A job without one (automatic dispatch) is in the trace derived from its job id. Either way every worker attempt of
the job is in one trace. The worker's ``job`` span id
also includes the server's per-attempt send time (``job.state.started_at``), so a job the server re-offers to another
worker after a reject gets a second ``job`` root, not a duplicate span id. Both values travel to the job process in the
Job proto of the StartJobRequest.
"""

from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager
from typing import Iterator

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

_local = threading.local()


def _h(*parts: object, n: int) -> int:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:n], "big") or 1


def trace_id_for(job_id: str, dispatch_id: str = "") -> int:
    """The trace of a job: its dispatch's trace when it has a dispatch id, else one derived from the job id."""
    if dispatch_id:
        return dispatch_trace_id_for(dispatch_id)
    return _h("lk_probe/trace", job_id, n=16)


def dispatch_trace_id_for(dispatch_id: str) -> int:
    return _h("lk_probe/dispatch-trace", dispatch_id, n=16)


def dispatch_span_id_for(dispatch_id: str) -> int:
    """The span id of the dispatcher's ``dispatch.create`` span of this dispatch."""
    return _h("lk_probe/dispatch", dispatch_id, n=8)


def root_span_id_for(job_id: str, started_at: int | float = 0) -> int:
    return _h("lk_probe/root", job_id, int(started_at or 0), n=8)


def job_parent_context(job_id: str, started_at: int | float = 0, *, dispatch_id: str = "", sampled: bool = True):
    """The context a job process attaches so that everything it records is a child of the worker's ``job`` span."""
    sc = SpanContext(trace_id_for(job_id, dispatch_id), root_span_id_for(job_id, started_at), is_remote=True,
                     trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT))
    return trace.set_span_in_context(NonRecordingSpan(sc))


class ForcingIdGenerator:
    """Wraps an SDK id generator; inside :func:`forced_ids` the next trace id / span id are the given ones.

    Installed on lk_probe's own SDK ``Tracer`` object only (``tracer.id_generator``), so nobody else's spans are
    affected.
    """

    def __init__(self, inner) -> None:
        self.inner = inner

    def generate_trace_id(self) -> int:
        forced = getattr(_local, "trace_id", None)
        if forced is not None:
            _local.trace_id = None
            return forced
        return self.inner.generate_trace_id()

    def generate_span_id(self) -> int:
        forced = getattr(_local, "span_id", None)
        if forced is not None:
            _local.span_id = None
            return forced
        return self.inner.generate_span_id()

    def __getattr__(self, name: str):  # is_trace_id_random() and whatever newer SDKs ask for
        return getattr(self.inner, name)


@contextmanager
def forced_ids(trace_id: int, span_id: int) -> Iterator[None]:
    _local.trace_id, _local.span_id = trace_id, span_id
    try:
        yield
    finally:
        _local.trace_id = _local.span_id = None


def install_forcing(tracer) -> bool:
    """Make ``tracer`` honour :func:`forced_ids`; False when it is not an SDK tracer (ids then stay random)."""
    gen = getattr(tracer, "id_generator", None)
    if gen is None:
        return False
    if not isinstance(gen, ForcingIdGenerator):
        tracer.id_generator = ForcingIdGenerator(gen)
    return True

"""Imported once by livekit-agents' forkserver (lk_probe appends it to the preload list), so that job processes —
single-use, one per job — inherit lk_probe's dependencies instead of importing them per job. Imports only: no
threads, no providers, no patches (the forkserver forks the job processes)."""

import opentelemetry.sdk.trace  # noqa: F401
import opentelemetry.sdk.trace.export  # noqa: F401

try:
    import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
except ImportError:  # pragma: no cover
    pass

from . import _journal, _provider, _recorder  # noqa: F401,E402
from ._patches import job, room, worker  # noqa: F401,E402
from ._rust import bridge, machine, records  # noqa: F401,E402

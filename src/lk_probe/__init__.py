"""lk_probe: OpenTelemetry spans for every phase of a LiveKit agent's life (work in progress)."""

__version__ = "0.1.0"

"""Supported version ranges (as opentelemetry-contrib's package.py)."""

_instruments = ("livekit-agents >= 1.2, < 1.9", "livekit >= 1.1, < 1.3")
_supports_metrics = True

"""lk_probe.testing: a LiveKit server double with fault injection (work in progress)."""

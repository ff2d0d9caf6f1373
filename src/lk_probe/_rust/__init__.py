"""The Rust engine bridge: Rust log records + FFI room events → phases of the connect path and reconnect episodes.

* :mod:`.records` — parse one record into an :class:`~.records.EngineEvent` (one pattern table per version range).
* :mod:`.machine` — :class:`~.machine.EngineMachine`, the state machine that emits phases into a ``PhaseSink``.
* :mod:`.attempt` — :class:`~.attempt.Attempt`, one connect or reconnect attempt and the phases inside it.
* :mod:`.out` — the sink as the machine sees it (redaction, no double end, a cap on open phases).
* :mod:`.bridge` — ``install(get_machine)`` / ``uninstall()`` / ``installed()``: the hook into
  ``livekit.rtc._ffi_client``.

Every string the machine emits goes through :mod:`lk_probe._redact`, like everything lk_probe exports.
"""

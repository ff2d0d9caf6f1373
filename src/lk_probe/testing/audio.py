"""Reading audio in tests: what a subscriber actually hears from a track, judged on the samples.

``rtc.AudioStream`` yields 10 ms frames from the subscription on whether or not any RTP arrives (the receive side
fills in silence), so counting frames proves nothing; :func:`hear` collects the samples and :func:`tone` says which
frequency dominates them and how loud they are.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

RATE = 48000


@dataclass(frozen=True)
class Tone:
    hz: float  # the dominant frequency
    rms: float  # 0..1 of full scale

    def audible(self, threshold: float = 0.01) -> bool:
        return self.rms >= threshold


def tone(samples: Any, rate: int = RATE) -> Tone:
    """The dominant frequency (FFT peak) and RMS of int16 mono ``samples``."""
    import numpy as np

    x = np.asarray(samples, dtype=np.float64) / 32768.0
    if x.size == 0:
        return Tone(0.0, 0.0)
    rms = float(np.sqrt(np.mean(x * x)))
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    spectrum[0] = 0.0
    hz = float(np.argmax(spectrum)) * rate / x.size
    return Tone(hz, rms)


async def hear(track: Any, seconds: float, *, rate: int = RATE, until_audible: float = 0.0) -> Any:
    """``seconds`` of a remote audio track's samples as one int16 array (mono, ``rate``).

    ``until_audible`` > 0: first skip silent frames for at most that long (the first packets take a moment to come
    through the jitter buffer), then collect ``seconds``."""
    import numpy as np
    from livekit import rtc

    stream = rtc.AudioStream(track, sample_rate=rate, num_channels=1)
    chunks: list[Any] = []
    need = int(seconds * rate)
    got = 0
    deadline = time.monotonic() + until_audible
    try:
        async for ev in stream:
            data = np.frombuffer(ev.frame.data, dtype=np.int16)
            if not chunks and until_audible > 0 and time.monotonic() < deadline \
                    and not tone(data, rate).audible():
                continue
            chunks.append(data.copy())
            got += data.size
            if got >= need:
                break
    finally:
        await asyncio.wait_for(stream.aclose(), 5)
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)

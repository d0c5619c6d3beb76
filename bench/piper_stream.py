"""`python -m bench.piper_stream [--repeats N]`: the default voice (Piper en_US-joe-medium),
streaming within a sentence vs whole pieces, in one run: time to the first chunk out of the
engine (at 48 kHz, resampled, leading silence trimmed) by sentence length, and engine-thread
CPU per second of audio. Engine-level figures (no network, no Opus): the client-side TTFA
adds the frame clock and the transport to these."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

SENTENCES = {
    "short": "Hello there, friend.",
    "medium": "This is sentence number 0, spoken for timing of the voice.",
    "long": "The quick brown fox jumps over the lazy dog, while the band plays on and the crowd cheers "
            "loudly for the home team.",
    "very long, no commas": "The quick brown fox jumps over the lazy dog while the band plays on and the "
                            "crowd cheers loudly for the home team that has never won a single game in its "
                            "long history of losing",
}


async def _measure(engine, voice, text: str) -> tuple[float, float, float]:
    t0, c0 = time.perf_counter(), time.thread_time()
    cpu0 = time.process_time()
    first = None
    samples = 0
    async for chunk in engine.stream(text, voice, sample_rate=48000):
        if first is None and chunk.pcm.size:
            first = time.perf_counter() - t0
        samples += len(chunk.pcm)
    cpu = time.process_time() - cpu0 - (time.thread_time() - c0)  # worker threads' CPU
    return first or 0.0, cpu, samples / 48000


async def run(repeats: int) -> None:
    from engines.piper import PiperEngine

    engines = {"streaming": PiperEngine([]), "whole-piece": PiperEngine([], streaming=False)}
    voice = next(v for v in engines["streaming"].voices() if v.id == "piper:en_US-joe-medium")
    for engine in engines.values():
        await engine.warm(voice)
        await _measure(engine, voice, "Warm up.")
    results = {(m, k): [] for m in engines for k in SENTENCES}
    cpu = {m: [0.0, 0.0] for m in engines}
    for _ in range(repeats):
        for kind, text in SENTENCES.items():
            for mode, engine in engines.items():  # interleaved: both see the same machine load
                first, used, audio = await _measure(engine, voice, text)
                results[(mode, kind)].append(first * 1000)
                cpu[mode][0] += used
                cpu[mode][1] += audio
    print(f"first chunk out of the engine, ms (median / max of {repeats}); load average {os.getloadavg()[0]:.2f}")
    for kind in SENTENCES:
        row = "  ".join(f"{m}: {statistics.median(results[(m, kind)]):6.1f} / {max(results[(m, kind)]):6.1f}"
                        for m in engines)
        print(f"  {kind:22s} {row}")
    per = {m: cpu[m][0] / cpu[m][1] for m in engines}
    print("CPU seconds per second of audio: " + ", ".join(f"{m} {v:.3f}" for m, v in per.items())
          + f" (streaming {100 * (per['streaming'] / per['whole-piece'] - 1):+.1f} %)")
    for engine in engines.values():
        engine.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    asyncio.run(run(args.repeats))


if __name__ == "__main__":
    main()

"""Per engine: model load time, first-audio latency and real-time factor over 50 sentences
of mixed length (engine level: stream() called → first PCM chunk; synthesis time / audio
duration). Prints a table and writes bench/results/engines.json.

    python -m bench.engines [--voices piper:en_US-joe-medium espeak:en-us] [--sentences 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path

from engines import load_engines

RESULTS = Path(__file__).parent / "results" / "engines.json"

_WORDS = ("the quick brown fox jumps over a lazy dog while seven happy children read their books "
          "in the quiet garden near an old stone bridge before dinner time tonight").split()


def sentences(n: int) -> list[str]:
    """n sentences from 2 to ~40 words, deterministic, some with clauses."""
    out = []
    for i in range(n):
        length = 2 + (i * 7) % 39
        words = [_WORDS[(i * 3 + k * 5) % len(_WORDS)] for k in range(length)]
        if length > 12:
            words[length // 2] += ","
        out.append(" ".join(words).capitalize() + ("?" if i % 5 == 0 else "."))
    return out


async def measure(engine, voice, texts: list[str]) -> dict:
    load_s = None
    if hasattr(engine, "warm"):
        load_s = await engine.warm(voice)
    # one warm-up utterance so first-call costs (phonemizer init) are not counted per sentence
    async for _ in engine.stream("Warm up.", voice):
        pass
    firsts, synth, audio = [], 0.0, 0.0
    for text in texts:
        t0 = time.perf_counter()
        first = None
        samples = 0
        async for chunk in engine.stream(text, voice):
            if first is None:
                first = time.perf_counter() - t0
            samples += len(chunk.pcm)
            rate = chunk.sample_rate
        synth += time.perf_counter() - t0
        audio += samples / rate
        firsts.append(first or 0.0)
    firsts.sort()
    hello = []
    for _ in range(5):  # a short greeting, the usual first words of a bot's reply
        t0 = time.perf_counter()
        stream = engine.stream("Hello there.", voice)
        await anext(stream)
        hello.append(time.perf_counter() - t0)
        await stream.aclose()
    return {
        "voice": voice.id,
        "load_s": round(load_s, 3) if load_s is not None else None,
        "first_audio_ms_median": round(statistics.median(firsts) * 1000, 1),
        "first_audio_ms_p95": round(firsts[int(len(firsts) * 0.95) - 1] * 1000, 1),
        "first_audio_ms_hello": round(statistics.median(hello) * 1000, 1),
        "rtf": round(synth / audio, 4),
        "audio_s": round(audio, 1),
        "sentences": len(texts),
    }


async def run(voice_ids: list[str], n: int) -> list[dict]:
    t0 = time.perf_counter()
    engines = {e.name: e for e in load_engines()}
    discovery_s = time.perf_counter() - t0
    texts = sentences(n)
    results = []
    for vid in voice_ids:
        engine = engines.get(vid.split(":")[0])
        if engine is None or not engine.available:
            results.append({"voice": vid, "error": getattr(engine, "unavailable_reason", "no such engine")})
            continue
        voice = next((v for v in engine.voices() if v.id == vid), None)
        if voice is None:
            results.append({"voice": vid, "error": "not installed"})
            continue
        results.append(await measure(engine, voice, texts))
    for e in engines.values():
        getattr(e, "close", lambda: None)()
    return [{"engines_discovery_s": round(discovery_s, 3)}] + results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices", nargs="+", default=["piper:en_US-joe-medium", "espeak:en-us"])
    parser.add_argument("--sentences", type=int, default=50)
    args = parser.parse_args(argv)
    header, *rows = asyncio.run(run(args.voices, args.sentences))
    print(f"engine discovery (all engines constructed): {header['engines_discovery_s']:.2f} s")
    print(f"{'voice':28} {'load s':>7} {'first ms (med)':>15} {'first ms (p95)':>15} {'hello ms (med)':>15} {'RTF':>7} {'audio s':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['voice']:28} unavailable: {r['error']}")
            continue
        load = f"{r['load_s']:.2f}" if r["load_s"] is not None else "-"
        print(f"{r['voice']:28} {load:>7} {r['first_audio_ms_median']:>15} {r['first_audio_ms_p95']:>15} {r['first_audio_ms_hello']:>15} "
              f"{r['rtf']:>7} {r['audio_s']:>8}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "discovery_s": header["engines_discovery_s"], "results": rows,
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

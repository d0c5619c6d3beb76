"""The peer baseline: the same TTFA and capacity measurements against a Pipecat pipeline
(SmallWebRTC transport, a TTS service around our eSpeak NG engine: bench/pipecat_server.py),
in the same run, reported as ratios ours/theirs.

Both are judged from the wire, the only view a Pipecat server offers: TTFA is `synthesize`
sent → first RTP packet whose decoded audio is speech (Pipecat streams silence between
utterances, so "first packet" means nothing there); capacity is the largest step with
>= 99.9 % of packets arriving within 5 ms of the stream's best case, none missing.

Pipecat pulls protobuf 6 while livekit-protocol here runs protobuf 7, so it lives in its own
virtual environment, looked for in this order: $BENCH_PIPECAT_PYTHON, this interpreter,
~/.cache/tts-agent-bench/pipecat/bin/python. Besides Pipecat that venv needs what our eSpeak
engine imports (espeakng-loader, soxr): SETUP_HINT installs all of it from PyPI. A Python is
taken only if it can import the transport AND start the engine, so a half-made venv is
reported here instead of answering every WHEP offer with 500.

Pipecat's defaults that differ from ours (left as they are: this compares frameworks as
shipped): its SmallWebRTC output track goes through aiortc's own Opus encoder, stereo at
96 kbps with libopus' `voip` application (SILK/hybrid), against our mono 32 kbps CELT
low-delay at complexity 0; it streams silence between utterances where we send nothing; and
its audio is paced by its output task on the event loop, not by a shared frame clock.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from . import capacity, ttfa
from .common import REPO_ROOT, ServerProcess, our_agent, print_table, write_result

DEFAULT_VENV = Path.home() / ".cache" / "tts-agent-bench" / "pipecat"
PIPECAT_REQUIREMENTS = ("pipecat-ai[webrtc]==1.14.0", "espeakng-loader>=0.2.4", "soxr>=0.3")  # the last two: engines/espeak.py
SETUP_HINT = (f"python3 -m venv {DEFAULT_VENV} && {DEFAULT_VENV}/bin/pip install "
              + " ".join(f"'{r}'" for r in PIPECAT_REQUIREMENTS))
# what bench.pipecat_server needs, checked the way it uses it (run from the repository root)
PROBE = ("import pipecat.transports.smallwebrtc.transport; from engines.espeak import EspeakEngine; "
         "EspeakEngine().voices()")


def pipecat_python() -> tuple[str | None, str]:
    """(a Python that can import Pipecat's SmallWebRTC transport, or None; why / which)."""
    candidates = [os.environ.get("BENCH_PIPECAT_PYTHON"), sys.executable, str(DEFAULT_VENV / "bin" / "python")]
    tried = []
    for python in filter(None, candidates):
        if not Path(python).exists():
            continue
        probe = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
        if probe.returncode == 0:
            return python, python
        tried.append(f"{python}: {probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else 'failed'}")
    return None, ("no Python with Pipecat's SmallWebRTC transport and our eSpeak engine (" + "; ".join(tried)
                  + f"). Set it up with: {SETUP_HINT}")


def pipecat_server(python: str, cpus: str | None = None) -> ServerProcess:
    return ServerProcess(["-m", "bench.pipecat_server"], name="pipecat", python=python, cpus=cpus,
                         ready_path="/healthz")


def _ttfa(server: ServerProcess, n: int) -> dict:
    with server:
        return ttfa.summarize(asyncio.run(ttfa.measure(server.base_url, n, room="bench-peer")))


def _client_capacity(steps: list[dict]) -> int:
    return capacity.capacity_of(steps, views=("client",))


def _ratio(a, b) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def main(quick: bool = False, ours_ttfa: dict | None = None, ours_capacity: dict | None = None) -> dict:
    """`ours_*`: results of this run's own ttfa/capacity modes (from `all`); measured here if absent."""
    python, why = pipecat_python()
    if python is None:
        print(f"peer: skipped: {why}")
        result = {"skipped": why}
        print(f"-> {write_result('peer', result)}")
        return result
    n = 5 if quick else 40
    print(f"peer: Pipecat from {python}", flush=True)

    ours_t = ours_ttfa if ours_ttfa is not None else _ttfa(our_agent(), n)
    theirs_t = _ttfa(pipecat_server(python), n)
    if ours_capacity is None:
        print("Capacity, ours (core 0; load on core 1)", flush=True)
        ours_steps = capacity.run_pinned(our_agent(cpus="0"), quick, agent_counters=True)
    else:
        ours_steps = ours_capacity["steps"]
    print("Capacity, Pipecat (core 0; load on core 1)", flush=True)
    theirs_steps = capacity.run_pinned(pipecat_server(python, cpus="0"), quick, agent_counters=False,
                                       browser=False)  # no /demo/listen page there
    ours_cap, theirs_cap = _client_capacity(ours_steps), _client_capacity(theirs_steps)

    o, t = ours_t["client_first_speech_ms"], theirs_t["client_first_speech_ms"]
    comparison = {
        "ttfa_first_speech_p50_ms": {"ours": o["p50"], "pipecat": t["p50"], "ratio": _ratio(o["p50"], t["p50"])},
        "ttfa_first_speech_p95_ms": {"ours": o["p95"], "pipecat": t["p95"], "ratio": _ratio(o["p95"], t["p95"])},
        "capacity_rooms_client_view": {"ours": ours_cap, "pipecat": theirs_cap, "ratio": _ratio(ours_cap, theirs_cap)},
    }
    print_table("Ours vs Pipecat (ratio = ours / theirs; TTFA lower is better, rooms higher is better)",
                ["measure", "ours", "pipecat", "ratio"],
                [[k, v["ours"], v["pipecat"], v["ratio"]] for k, v in comparison.items()])
    steps_by = {"ours": ours_steps, "pipecat": theirs_steps}
    plot = capacity.plot_curves("peer", {k: [s["rooms"] for s in v] for k, v in steps_by.items()}, {
        "on time % (client)": {k: [100 * (s["client"]["on_time"] or 0) for s in v] for k, v in steps_by.items()},
        "server CPU %": {k: [s["server_cpu_pct"] for s in v] for k, v in steps_by.items()},
        "server RSS MB": {k: [s["server_rss_mb"] for s in v] for k, v in steps_by.items()},
    }, "rooms speaking")
    result = {"pipecat_python": python, "utterances": n, "comparison": comparison,
              "ttfa": {"ours": ours_t, "pipecat": theirs_t},
              "capacity_steps": steps_by, "plot": str(plot) if plot else None}
    print(f"-> {write_result('peer', result)}")
    return result

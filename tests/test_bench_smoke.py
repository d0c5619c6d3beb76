"""Each bench mode at tiny scale (`--quick`), so the harness does not rot.

These assert the shape and sanity of what the benchmarks write (counts > 0, shares within
0..1, the figures present), never a timing threshold: timing belongs in bench/. Each mode
starts a real agent process and drives it with real aiortc peers on loopback.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from bench.common import REPO_ROOT, RESULTS_DIR
from bench.packets import arrival_lateness, missing_packets, unwrap_rtp

pytestmark = pytest.mark.timeout(240)


def run_mode(mode: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench", mode, "--quick"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((RESULTS_DIR / f"{mode}.json").read_text())
    assert data["mode"] == mode and data["machine"]["cpus"] >= 1
    return data


def _sane_percentiles(stats: dict) -> None:
    assert stats["n"] > 0
    assert 0 <= stats["p50"] <= stats["p95"] <= stats["p99"] <= stats["max"]


def test_ttfa_quick():
    data = run_mode("ttfa")
    assert data["utterances"] == len(data["samples"]) > 0
    for key in ("agent_ttfa_ms", "client_first_packet_ms", "client_first_speech_ms"):
        _sane_percentiles(data[key])
    # the client cannot see a packet before the agent sent it
    assert data["client_first_packet_ms"]["p50"] >= data["agent_ttfa_ms"]["p50"] * 0.5


def test_interrupt_quick():
    data = run_mode("interrupt")
    _sane_percentiles(data["client_last_packet_ms"])
    assert all(s["played_ms"] > 0 for s in data["samples"])  # interrupted mid-speech, not before it


def test_capacity_quick():
    from bench.capacity import capacity_of

    data = run_mode("capacity")
    steps = data["steps"]
    assert [s["rooms"] for s in steps] == data["plan"]["steps"][: len(steps)] and steps
    for s in steps:
        assert s["agent"]["frames_sent"] > 0 and s["client"]["packets"] > 0
        assert 0 <= s["agent"]["on_time"] <= 1 and 0 <= s["client"]["on_time"] <= 1
        assert s["server_cpu_pct"] > 0 and s["server_rss_mb"] > 0
        assert s["cost"]["ratio_to_floor"] > 0 and s["cost"]["opus_floor_us_per_frame"] > 0
        # a real Chromium played the first room: it received samples, and concealed a share of them
        assert s["listener"]["samples"] > 0 and 0 <= s["listener"]["concealed_share"] <= 1
        assert (s["failure"] is None) == (capacity_of([s]) == s["rooms"])
    assert data["capacity_rooms"] == capacity_of(steps) == data["ramp_capacities"][0]
    speed = data["reference_speed"]
    assert speed["opus_encodes_per_s"] > 0 and speed["python_loop_10M_s"] > 0


def test_idle_quick():
    data = run_mode("idle")
    assert data["rooms"] > 0 and data["rss_mb"] > 0 and data["cpu_pct"] >= 0
    assert data["audio_packets_received"] == 0  # an idle room sends no audio


def test_peer_quick():
    data = run_mode("peer")
    if "skipped" in data:
        assert "pipecat" in data["skipped"]  # says why, and how to set it up
        return
    comp = data["comparison"]
    assert comp["ttfa_first_speech_p50_ms"]["ours"] > 0 and comp["ttfa_first_speech_p50_ms"]["pipecat"] > 0
    assert data["capacity_steps"]["pipecat"][0]["client"]["packets"] > 0


def test_lateness_against_the_streams_best_case():
    # 20 ms packets, one 12 ms late, RTP timestamps wrapping past 2**32 mid-stream
    stamps = (np.arange(10) * 960 + 2**32 - 3 * 960) % 2**32
    arrivals = np.arange(10) * 0.020 + 5.0
    arrivals[6] += 0.012
    late = arrival_lateness(arrivals, stamps)
    assert np.nonzero(late > 0.005)[0].tolist() == [6]
    assert unwrap_rtp(stamps)[-1] - unwrap_rtp(stamps)[0] == 9 * 960
    assert missing_packets(np.delete(stamps, [3, 4])) == 2


def test_queue_flood_short():
    proc = subprocess.run([sys.executable, "-m", "bench.queue_flood", "--seconds", "2"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (run,) = json.loads((RESULTS_DIR / "queue_flood.json").read_text())["runs"]["after"]
    assert run["sent"] == run["queued"] + run["queue_full"] + run["rate_limited"]  # every message answered
    assert run["queue_full"] > 0 and run["queue_after_flood"] <= 64  # the default per-sender cap held
    assert run["queue_after_leave"] == 0  # and the flooder's queue left with it

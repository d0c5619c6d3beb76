"""What every bench mode shares: a server in its own process, tokens, Prometheus scrapes,
process CPU/RSS, percentiles, the results folder, tables and plots.

The server under test always runs in a separate process (`python -m agent serve`), so the
measuring client never shares an interpreter lock or, where pinned, a core with it.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEV_KEY, DEV_SECRET = "devkey", "secret"  # the agent's loopback-only dev pair


def use_loopback_ice() -> None:
    """The bench's own peers offer only 127.0.0.1: media stays on loopback."""
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def room_token(room: str, identity: str) -> str:
    """A LiveKit-format room token, minted the way any LiveKit client would."""
    from livekit import api

    grants = api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True,
                             can_publish_data=True)
    return api.AccessToken(DEV_KEY, DEV_SECRET).with_identity(identity).with_grants(grants).to_jwt()


@dataclass
class ServerProcess:
    """A speech server (ours or a peer framework's) in a child process on a loopback port."""

    argv: list[str]
    name: str = "tts-agent"
    cpus: str | None = None  # taskset CPU list, e.g. "0"
    python: str = sys.executable
    port: int = field(default_factory=free_port)
    ready_path: str = "/readyz"
    proc: subprocess.Popen | None = None
    cwd: Path = REPO_ROOT  # another checkout: compare before/after in one run

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def start(self, timeout: float = 60) -> "ServerProcess":
        cmd = [self.python, *self.argv, "--port", str(self.port)]
        if self.cpus is not None:
            cmd = ["taskset", "-c", self.cpus, *cmd]  # taskset execs: the pid is the server's
        env = {k: v for k, v in os.environ.items() if not k.startswith("TTS_AGENT_")}
        env.update(TTS_AGENT_LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1", PYTHONPATH=str(self.cwd))
        self._log = open(_results_dir() / f"{self.name}.log", "w")  # the server's output, for post-mortems
        self.proc = subprocess.Popen(cmd, cwd=self.cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self._log.name}")
            try:
                if httpx.get(self.base_url + self.ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)  # polling a child's readiness: there is no event to wait on
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


BENCH_VOICE = "espeak:en-us"  # the engine the Pipecat peer wraps too, so only the framework differs


def our_agent(cpus: str | None = None, voice: str | None = BENCH_VOICE) -> ServerProcess:
    """`voice=None`: the agent's own default (the best installed English voice)."""
    return ServerProcess(["-m", "agent", "serve", "--log-level", "WARNING"] + (["--voice", voice] if voice else []),
                         name="tts-agent", cpus=cpus)


def _results_dir() -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    return RESULTS_DIR


def scrape(base_url: str) -> dict[str, float]:
    """Prometheus `/metrics` as {sample name{labels}: value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(base_url + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


class ProcessMeter:
    """CPU (% of one core, all threads) and RSS of a process between two marks."""

    def __init__(self, pid: int):
        import psutil

        self.proc = psutil.Process(pid)
        self.mark()

    def mark(self) -> None:
        t = self.proc.cpu_times()
        self._cpu, self._wall = t.user + t.system, time.perf_counter()

    def cpu_percent(self) -> float:
        t = self.proc.cpu_times()
        return 100 * (t.user + t.system - self._cpu) / max(time.perf_counter() - self._wall, 1e-9)

    def rss_mb(self) -> float:
        return self.proc.memory_info().rss / 2**20


def run_queue_wait_s(pid: int, tid: int | None = None) -> float | None:
    """Seconds a thread (default: the process's main thread, where the servers run their event
    loop) has waited runnable on a run queue: time other tasks had its core (Linux schedstat)."""
    try:
        return int(Path(f"/proc/{pid}/task/{tid or pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def percentiles(values, ps=(50, 95, 99)) -> dict[str, float | int | None]:
    arr = np.asarray(list(values), dtype=float)
    out: dict[str, float | int | None] = {"n": int(arr.size)}
    for p in ps:
        out[f"p{p}"] = round(float(np.percentile(arr, p)), 3) if arr.size else None
    out["mean"] = round(float(arr.mean()), 3) if arr.size else None
    out["max"] = round(float(arr.max()), 3) if arr.size else None
    return out


def machine() -> dict:
    import psutil

    return {"python": platform.python_version(), "cpus": os.cpu_count(), "cpu_model": _cpu_model(),
            "load_avg_1m": round(os.getloadavg()[0], 2), "mem_gb": round(psutil.virtual_memory().total / 2**30, 1)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


@contextmanager
def pinned(cpus: set[int] | None):
    """Run this process on `cpus` for the duration (no-op where there are too few cores)."""
    if not cpus or not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) <= max(cpus):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


PYTHON_LOOP_STEPS = 10_000_000  # "a bare 10-million-step loop": the figure issue reports quote


def _python_loop(steps: int) -> int:
    total = 0
    for i in range(steps):  # the fixed pure-Python workload: bytecode dispatch and int adds
        total += i
    return total


def speech_like_frames(n: int = 250, seed: int = 7) -> list:
    """`n` 20 ms frames of 48 kHz int16 with a gliding voiced tone and noise: CELT's cost
    depends little on content, but silence is nearly free, so the floor is not measured on it."""
    import numpy as np

    from agent.audio import FRAME_SAMPLES, SAMPLE_RATE

    t = np.arange(n * FRAME_SAMPLES) / SAMPLE_RATE
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    noise = np.random.default_rng(seed).normal(0, 0.05, t.size)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2  # syllable-rate loudness
    pcm = (9000 * envelope * voiced / 3 + 9000 * noise).clip(-32768, 32767).astype(np.int16)
    return [np.ascontiguousarray(f) for f in pcm.reshape(n, FRAME_SAMPLES)]


def opus_encode_floor_us(frames: list | None = None, repeats: int = 3) -> float:
    """CPU µs per 20 ms frame for the agent's own encoder settings (agent/opus.py: libopus,
    mono, 32 kbps, CELT low-delay, complexity 0): what one speaking room costs at the least.
    Best of `repeats` (CPU time of this thread: another process on the core adds no time)."""
    from agent.opus import make_encoder
    from agent.settings import Settings

    settings = Settings()
    frames = frames if frames is not None else speech_like_frames()
    best = float("inf")
    for _ in range(repeats):
        encoder = make_encoder(settings.opus_bitrate, settings.opus_application, settings.opus_complexity)
        t0 = time.thread_time()
        for f in frames:
            encoder.encode(f)
        best = min(best, (time.thread_time() - t0) / len(frames))
        encoder.close()
    return best * 1e6


def reference_speed(quick: bool = False, cpu: int | None = 0) -> dict:
    """How fast this machine is, measured now, on the core the server will use: figures from
    two machines (or two hours of one VM) compare only next to these. CPU time, best of 3."""
    steps = PYTHON_LOOP_STEPS // (10 if quick else 1)
    with pinned({cpu} if cpu is not None else None):
        floor_us = opus_encode_floor_us(repeats=2 if quick else 3)
        loop_s = float("inf")
        for _ in range(2 if quick else 3):
            t0 = time.thread_time()
            _python_loop(steps)
            loop_s = min(loop_s, time.thread_time() - t0)
    return {"opus_encodes_per_s": round(1e6 / floor_us), "opus_encode_us": round(floor_us, 2),
            "python_loop_10M_s": round(loop_s * PYTHON_LOOP_STEPS / steps, 3),
            "how": "one core, CPU time, best of 3: libopus encodes of 20 ms mono frames at the agent's "
                   "settings (agent/opus.py), and `for i in range(10**7): total += i`",
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def write_result(mode: str, data: dict) -> Path:
    data = {"mode": mode, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), **data}
    path = _results_dir() / f"{mode}.json"
    path.write_text(json.dumps(data, indent=2, default=float))
    return path


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def plot_distributions(mode: str, series: dict[str, list[float]], xlabel: str) -> Path | None:
    """A CDF per series: where a tail matters more than a mean."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, values in series.items():
        if len(values):
            v = np.sort(np.asarray(values))
            ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", label=f"{label} (n={len(v)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of samples ≤ x")
    ax.grid(alpha=0.3)
    ax.legend()
    path = _results_dir() / f"{mode}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(mode: str, x: dict[str, list[float]], ys: dict[str, dict[str, list[float]]], xlabel: str) -> Path | None:
    """One panel per measured quantity, one line per series (e.g. ours / pipecat)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(len(ys), 1, figsize=(7, 2.6 * len(ys)), sharex=True)
    axes = np.atleast_1d(axes)
    for ax, (quantity, by_series) in zip(axes, ys.items()):
        for series, values in by_series.items():
            ax.plot(x[series], values, marker="o", label=series)
        ax.set_ylabel(quantity)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[-1].set_xlabel(xlabel)
    path = _results_dir() / f"{mode}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

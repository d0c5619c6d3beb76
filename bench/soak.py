"""Soak: peers join and leave, utterances start and get interrupted at random, for a long
time; the server's RSS, open fds, asyncio tasks and live RTCPeerConnections are sampled
throughout and must come back to their baseline once everyone has left.

    python -m bench.soak --minutes 30

The server runs in its own process (`python -m bench.soak --serve`): the real agent and
control plane under uvicorn, plus a sampler that writes one JSON line every few seconds
(task and peer-connection counts are only visible from inside the process).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import sys
import time
from pathlib import Path

import httpx

from .common import (RESULTS_DIR, ServerProcess, print_table, room_token, scrape, use_loopback_ice,
                     write_result)

TEXTS = [
    "Welcome to the stream, everyone, and thanks for stopping by tonight.",
    "This sentence is long on purpose so that someone can interrupt it halfway through, which they will.",
    "Short one.",
    "Numbers like 42 and 1999 get read out too, as do abbreviations such as NASA and the BBC.",
]


# -- server side -------------------------------------------------------------------------

def serve(port: int, samples_path: Path, sample_s: float, grace_s: float) -> None:
    import psutil
    import uvicorn
    from aiortc import RTCPeerConnection

    from agent.logs import setup_logging
    from agent.runtime import Agent
    from agent.settings import load_settings
    from control_api import create_app

    settings = load_settings(port=port, room_grace_s=grace_s, log_level="WARNING")
    setup_logging(settings.log_format, settings.log_level)
    agent = Agent(settings)
    app = create_app(agent)
    proc = psutil.Process()

    def sample() -> dict:
        gc.collect()  # count what is reachable, not what awaits collection
        pcs = [o for o in gc.get_objects() if isinstance(o, RTCPeerConnection)]
        return {
            "t": time.time(), "rss_mb": round(proc.memory_info().rss / 2**20, 2), "fds": proc.num_fds(),
            "tasks": len(asyncio.all_tasks()), "peer_connections": len(pcs),
            "open_peer_connections": sum(pc.connectionState != "closed" for pc in pcs),
            "sessions": len(agent.webrtc.sessions), "rooms": len(agent.rooms.rooms),
            "peers": sum(len(r.peers) for r in agent.rooms.rooms.values()), "threads": proc.num_threads(),
        }

    async def sampler() -> None:
        with open(samples_path, "a") as out:
            while True:
                out.write(json.dumps(sample()) + "\n")
                out.flush()
                await asyncio.sleep(sample_s)

    async def main() -> None:
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                               access_log=False, timeout_graceful_shutdown=5))
        task = asyncio.create_task(sampler())
        try:
            await server.serve()
        finally:
            task.cancel()

    asyncio.run(main())


# -- load side ---------------------------------------------------------------------------

class Churn:
    """Random joins, leaves (polite DELETE or a vanishing pc), speech and interrupts."""

    def __init__(self, base_url: str, rooms: int, max_peers: int, seed: int):
        from .listener import Listener

        self.Listener = Listener
        self.base_url = base_url
        self.rooms = [f"soak-{i}" for i in range(rooms)]
        self.max_peers = max_peers
        self.rng = random.Random(seed)
        self.peers: dict[str, list] = {r: [] for r in self.rooms}
        self.counts = {"joins": 0, "leaves": 0, "vanishes": 0, "speaks": 0, "interrupts": 0, "join_failures": 0}
        self.http = httpx.AsyncClient(base_url=base_url, timeout=30)

    async def step(self) -> None:
        room = self.rng.choice(self.rooms)
        peers = self.peers[room]
        action = self.rng.choices(["join", "leave", "speak", "interrupt"], [3, 2, 4, 3])[0]
        if action == "join" or not peers:
            if len(peers) < self.max_peers:
                await self.join(room)
            return
        peer = self.rng.choice(peers)
        if peer.channel is None or peer.channel.readyState != "open":
            return
        if action == "leave":
            await self.leave(room, peer, polite=self.rng.random() < 0.7)
        elif action == "speak":
            peer.channel.send(json.dumps({"type": "synthesize", "text": self.rng.choice(TEXTS),
                                          "priority": self.rng.choice(["normal", "normal", "high", "critical"])}))
            self.counts["speaks"] += 1
        else:
            peer.channel.send(json.dumps({"type": "interrupt"}))
            self.counts["interrupts"] += 1

    async def join(self, room: str) -> None:
        peer = self.Listener(self.http, room, room_token(room, f"p{self.counts['joins']}"))
        try:
            await peer.connect()
        except Exception:
            self.counts["join_failures"] += 1
            await peer.pc.close()
            return
        self.peers[room].append(peer)
        self.counts["joins"] += 1

    async def leave(self, room: str, peer, polite: bool) -> None:
        self.peers[room].remove(peer)
        if polite:
            await peer.close()  # DELETE the session, then close
            self.counts["leaves"] += 1
        else:
            await peer.pc.close()  # no DELETE: the agent learns it from DTLS close
            self.counts["vanishes"] += 1

    async def leave_all(self) -> None:
        for room, peers in self.peers.items():
            for peer in list(peers):
                await self.leave(room, peer, polite=True)

    async def run(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await self.step()
            await asyncio.sleep(self.rng.uniform(0.1, 0.6))  # pacing of the load, not a wait for a result
        await self.leave_all()
        await self.http.aclose()


async def _wait_samples(path: Path, n: int, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _read(path)
        if len(rows) >= n:
            return rows
        await asyncio.sleep(0.5)
    return _read(path)


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def _settled(path: Path, baseline: dict, timeout: float, sample_s: float) -> list[dict]:
    """Samples until the server is back to no sessions, rooms or open peer connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _read(path)
        last = rows[-1]
        if last["t"] > time.time() - sample_s * 1.5 and last["sessions"] == 0 and last["rooms"] == 0 \
                and last["open_peer_connections"] == 0 and last["tasks"] <= baseline["tasks"]:
            return rows
        await asyncio.sleep(sample_s)
    return _read(path)


def plot(rows: list[dict], baseline: dict, t0: float, churn_end: float, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    t = [(r["t"] - t0) / 60 for r in rows]
    panels = [("rss_mb", "RSS (MiB)"), ("fds", "open fds"), ("tasks", "asyncio tasks"),
              ("open_peer_connections", "open RTCPeerConnections")]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 9), sharex=True)
    for ax, (key, label) in zip(axes, panels):
        ax.plot(t, [r[key] for r in rows], lw=1.2)
        if key == "open_peer_connections":
            ax.plot(t, [r["peers"] for r in rows], lw=0.8, ls="--", label="room peers")
            ax.legend()
        ax.axhline(baseline[key], color="grey", lw=0.8, ls=":")
        ax.axvline((churn_end - t0) / 60, color="red", lw=0.8, ls=":")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax0 = axes[0]
    ax0.axvline((baseline["t"] - t0) / 60, color="green", lw=0.8, ls=":")
    axes[-1].set_xlabel("minutes (green: warm-up done, baseline taken; red: churn stops; grey: baseline)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(minutes: float = 30.0, rooms: int = 4, max_peers: int = 3, sample_s: float = 5.0, seed: int = 1,
         warmup_s: float = 30.0) -> dict:
    use_loopback_ice()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    samples = RESULTS_DIR / "soak-samples.jsonl"
    samples.unlink(missing_ok=True)
    grace_s = 2.0
    server = ServerProcess([*_self_argv(), "--serve", "--samples", str(samples), "--sample-s", str(sample_s),
                            "--grace", str(grace_s)], name="soak-server")
    with server:
        rows = asyncio.run(_wait_samples(samples, 2, 60))
        t0 = rows[0]["t"]
        # warm-up: models load, caches and pools fill; the baseline is taken once it settles
        asyncio.run(Churn(server.base_url, rooms, max_peers, seed + 1).run(warmup_s))
        rows = asyncio.run(_settled(samples, rows[-1], 60 + grace_s, sample_s))
        baseline = rows[-1]
        churn = Churn(server.base_url, rooms, max_peers, seed)
        asyncio.run(churn.run(minutes * 60))
        churn_end = time.time()
        rows = asyncio.run(_settled(samples, baseline, 120 + grace_s, sample_s))
        metrics = scrape(server.base_url)
    after = rows[-1]
    during = [r for r in rows if baseline["t"] < r["t"] <= churn_end]
    keys = ["rss_mb", "fds", "tasks", "threads", "peer_connections", "open_peer_connections", "sessions", "rooms"]
    table = [[k, baseline[k], max((r[k] for r in during), default=None), after[k],
              round(after[k] - baseline[k], 2)] for k in keys]
    print_table(f"Soak: {minutes:g} min, {rooms} rooms, up to {max_peers} peers each", ["measure", "before", "peak",
                                                                                           "after", "after - before"], table)
    print("actions:", churn.counts)
    png = plot(rows, baseline, t0, churn_end, RESULTS_DIR / "soak.png")
    result = {
        "minutes": minutes, "warmup_s": warmup_s, "rooms": rooms, "max_peers": max_peers, "actions": churn.counts,
        "before": baseline, "after": after, "peak": {k: max((r[k] for r in during), default=None) for k in keys},
        "settle_s": round(after["t"] - churn_end, 1),
        "utterances": {k: v for k, v in metrics.items() if k.startswith("tts_utterances_total")},
        "frames_sent": metrics.get("tts_frames_sent_total"), "frames_late": metrics.get("tts_frames_late_total"),
        "samples": rows, "plot": str(png) if png else None,
    }
    print(f"-> {write_result('soak', result)}")
    return result


def _self_argv() -> list[str]:
    return ["-m", "bench.soak"]


def cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--rooms", type=int, default=4)
    p.add_argument("--max-peers", type=int, default=3)
    p.add_argument("--sample-s", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--warmup-s", type=float, default=30.0)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the server child
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--samples", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--grace", type=float, default=2.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.port, args.samples, args.sample_s, args.grace)
    else:
        main(args.minutes, args.rooms, args.max_peers, args.sample_s, args.seed, args.warmup_s)


if __name__ == "__main__":
    sys.exit(cli())

"""Load held: one client floods the agent with WHEP offers and `speak` requests (rate limits
on, as by default) while other rooms speak. Their audio must keep its 20 ms pace.

    python -m bench.flood --seconds 20
    python -m bench.flood --only datachannel --seconds 5   # a peer flooding its data channel

`--only datachannel`: a real aiortc peer sends 2000 messages a second on its `tts` channel
(each one, if accepted, answered with an `error`), once with the per-peer message budget
effectively off and once with the default budget, each against a fresh agent; for each it
says whether a packet in another room arrived later than 20 ms after its slot.

Measured per phase (quiet, then flood): the agent's late frames (`tts_frames_late_total` /
`tts_frames_sent_total` from /metrics) and, at a listener in each speaking room, the arrival
spacing of consecutive RTP packets (timestamps 960 apart: one 20 ms frame). The flooder runs
in its own process, so its CPU is not the listeners'.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import subprocess
import sys
import time

import httpx
import numpy as np

from .common import (REPO_ROOT, our_agent, percentiles, plot_distributions, print_table, room_token, scrape,
                     use_loopback_ice, write_result)
from .listener import Listener

SPEECH = ("The other rooms keep talking while one client hammers the door. Every frame should still "
          "leave on time, twenty milliseconds apart, whatever the flood does.")


# -- the flooder (a child process) -----------------------------------------------------

KINDS = ("whep", "whep-garbage", "speak", "speak", "speak-bad")


async def flood(base_url: str, seconds: float, workers: int, only: str | None = None) -> dict:
    from aiortc import RTCPeerConnection

    from agent.auth import TokenAuthority
    from agent.settings import DEV_KEY, DEV_SECRET

    use_loopback_ice()
    tokens = TokenAuthority({DEV_KEY: DEV_SECRET})
    room_tok = tokens.mint("flooder", room="flood")
    admin_tok = tokens.mint("flooder-admin", admin=True)
    pc = RTCPeerConnection()  # one real offer, sent again and again (its ICE never completes)
    pc.addTransceiver("audio", direction="recvonly")
    pc.createDataChannel("tts")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    await pc.close()
    statuses: collections.Counter = collections.Counter()
    end = time.monotonic() + seconds
    kinds = [k for k in KINDS if only is None or k.startswith(only)]

    async def worker(i: int, http: httpx.AsyncClient) -> None:
        n = 0
        while time.monotonic() < end:
            n += 1
            kind = kinds[(i + n) % len(kinds)]
            try:
                if kind.startswith("whep"):
                    r = await http.post("/v1/rooms/flood/whep", content=offer if kind == "whep" else "v=0\r\nm=x",
                                        headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {room_tok}"})
                else:
                    body = {"text": f"flood {i} {n}"} if kind == "speak" else {"txt": "typo"}
                    r = await http.post("/v1/rooms/flood/speak", json=body,
                                        headers={"Authorization": f"Bearer {admin_tok}"})
                statuses[f"{kind} {r.status_code}"] += 1
            except httpx.HTTPError as exc:
                statuses[f"{kind} {type(exc).__name__}"] += 1

    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as http:
        # one session opens the flood room, so that `speak` there is accepted (202) up to the limit
        r = await http.post("/v1/rooms/flood/whep", content=offer,
                            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {room_tok}"})
        statuses[f"whep {r.status_code}"] += 1
        await asyncio.gather(*(worker(i, http) for i in range(workers)))
    return dict(statuses)


async def flood_datachannel(base_url: str, seconds: float, rate: int = 2000) -> dict:
    """A real peer sending `rate` invalid messages a second on its data channel."""
    from agent.auth import TokenAuthority
    from agent.client import RoomClient
    from agent.settings import DEV_KEY, DEV_SECRET

    use_loopback_ice()
    token = TokenAuthority({DEV_KEY: DEV_SECRET}).mint("flooder", room="flood")
    client = RoomClient(base_url, "flood", token)
    await client.connect()
    sent, start = 0, time.monotonic()
    per_tick = max(1, rate // 50)
    while time.monotonic() - start < seconds and client.channel.readyState == "open":
        for _ in range(per_tick):
            client.channel.send('{"type":"synthesize"}')  # missing text: an `error` each, if accepted
        sent += per_tick
        await asyncio.sleep(0.02)  # pacing the flood at `rate`
    cut_after = time.monotonic() - start if client.channel.readyState != "open" else None
    await asyncio.sleep(0.5)  # replies still in flight
    codes = collections.Counter(e.get("code") for e in client.events_of("error"))
    await client.close()
    return {"sent": sent, "errors": dict(codes), "disconnected_after_s": cut_after}


def late_over_ms(listener: Listener, start: float, end: float, limit_ms: float = 20.0) -> tuple[int, int]:
    """(packets arriving more than `limit_ms` after their slot, packets) in a window. A packet's
    slot is its RTP timestamp on the sender's clock; the earliest packet sets the offset."""
    arr = np.frombuffer(listener.arrivals, dtype=np.float64)
    ts = np.frombuffer(listener.timestamps, dtype=np.int64)
    n = min(len(arr), len(ts))
    arr, ts = arr[:n], ts[:n]
    keep = (arr >= start) & (arr < end)
    if not keep.any():
        return 0, 0
    ts = np.unwrap(ts, period=2**32)  # RTP timestamps wrap at 2^32
    behind = arr - ts / 48_000
    lateness_ms = (behind - behind.min()) * 1000
    return int((lateness_ms[keep] > limit_ms).sum()), int(keep.sum())


# -- the measuring side ----------------------------------------------------------------

def spacing_ms(listener: Listener, start: float, end: float) -> list[float]:
    """Arrival gaps between packets one frame apart (RTP timestamps 960 apart), in a window."""
    arr = np.frombuffer(listener.arrivals, dtype=np.float64)
    ts = np.frombuffer(listener.timestamps, dtype=np.int64)
    n = min(len(arr), len(ts))
    arr, ts = arr[:n], ts[:n]
    keep = (arr[1:] >= start) & (arr[1:] < end) & (np.diff(ts) == 960)
    return list(np.diff(arr)[keep] * 1000)


async def phase(base_url: str, seconds: float, flooder: list[str] | None) -> tuple[dict, dict, float, float]:
    before = await asyncio.to_thread(scrape, base_url)
    start = time.perf_counter()
    statuses: dict = {}
    if flooder is None:
        await asyncio.sleep(seconds)  # the quiet phase: just listen for this long
    else:
        proc = await asyncio.create_subprocess_exec(*flooder, stdout=subprocess.PIPE, cwd=REPO_ROOT)
        out, _ = await proc.communicate()
        import json

        statuses = json.loads(out.decode().strip().splitlines()[-1])
    end = time.perf_counter()
    after = await asyncio.to_thread(scrape, base_url)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in ("tts_frames_sent_total", "tts_frames_late_total")}
    return delta, statuses, start, end


async def measure(base_url: str, rooms: int, seconds: float, workers: int, only: str | None) -> dict:
    use_loopback_ice()
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        listeners = []
        for i in range(rooms):
            listener = Listener(http, f"steady-{i}", room_token(f"steady-{i}", f"l{i}"))
            await listener.connect()
            listener.speak(SPEECH)
            listeners.append(listener)
        while min(len(lst.arrivals) for lst in listeners) < 50:  # everyone is speaking
            await asyncio.sleep(0.1)
        quiet, _, q0, q1 = await phase(base_url, seconds, None)
        flooder = [sys.executable, "-m", "bench.flood", "--flooder", base_url, "--seconds", str(seconds),
                   "--workers", str(workers), *(["--only", only] if only else [])]
        flooded, statuses, f0, f1 = await phase(base_url, seconds, flooder)
        for listener in listeners:
            listener.speak_text = None
            await listener.close()
    return {
        "quiet": {**quiet, "spacing_ms": [g for lst in listeners for g in spacing_ms(lst, q0, q1)],
                  "late_20ms": [sum(v) for v in zip(*(late_over_ms(lst, q0, q1) for lst in listeners))]},
        "flood": {**flooded, "spacing_ms": [g for lst in listeners for g in spacing_ms(lst, f0, f1)],
                  "late_20ms": [sum(v) for v in zip(*(late_over_ms(lst, f0, f1) for lst in listeners))],
                  "requests": statuses},
    }


def main_datachannel(rooms: int, seconds: float, repeats: int = 3) -> dict:
    """The data-channel flood with the message budget off, then on (defaults), `repeats` times."""
    import json
    import tempfile

    from .common import BENCH_VOICE, ServerProcess

    off = {"peer_messages_per_s": 1e9, "peer_message_burst": 10**9, "peer_flood_drops": 10**9}
    rows, runs = [], []
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(off, f)
    for repeat in range(repeats):
        for name, extra in (("budget off", ["--config", f.name]), ("budget on", [])):
            server = ServerProcess(["-m", "agent", "serve", "--log-level", "WARNING", "--voice", BENCH_VOICE, *extra],
                                   name="tts-agent")
            with server:
                data = asyncio.run(measure(server.base_url, rooms, seconds, 1, "datachannel"))
            flood, quiet = data["flood"], data["quiet"]
            late, packets = flood["late_20ms"] or [0, 0]
            quiet_late, quiet_packets = quiet["late_20ms"] or [0, 0]
            req = flood["requests"]
            runs.append({"budget": name, "repeat": repeat, "late_over_20ms": late, "packets": packets,
                         "quiet_late_over_20ms": quiet_late, "quiet_packets": quiet_packets,
                         "agent_late_5ms": flood["tts_frames_late_total"],
                         "quiet_agent_late_5ms": quiet["tts_frames_late_total"], **req})
            rows.append([name, repeat, f"{quiet_late}/{quiet_packets}", f"{late}/{packets}",
                         f"{int(quiet['tts_frames_late_total'])}/{int(quiet['tts_frames_sent_total'])}",
                         f"{int(flood['tts_frames_late_total'])}/{int(flood['tts_frames_sent_total'])}",
                         req.get("sent"), req.get("errors"), req.get("disconnected_after_s")])
    print_table(f"Data-channel flood: 2000 messages/s from one peer, {rooms} other rooms speaking, "
                f"{seconds:g} s per phase", ["budget", "run", ">20 ms late quiet", ">20 ms late flood",
                                             "agent late quiet", "agent late flood", "sent", "errors back",
                                             "cut after s"], rows)
    result = {"rooms": rooms, "seconds": seconds, "runs": runs}
    print(f"-> {write_result('flood-datachannel', result)}")
    return result


def main(rooms: int = 3, seconds: float = 20.0, workers: int = 16, only: str | None = None) -> dict:
    if only == "datachannel":
        return main_datachannel(rooms, seconds)
    with our_agent() as agent:
        data = asyncio.run(measure(agent.base_url, rooms, seconds, workers, only))
        final = scrape(agent.base_url)
    rows = []
    summary = {}
    for name in ("quiet", "flood"):
        d = data[name]
        sent, late = d["tts_frames_sent_total"], d["tts_frames_late_total"]
        gaps = d["spacing_ms"]
        stats = percentiles(gaps, (50, 99, 99.9))
        over = sum(g > 40 for g in gaps)  # a frame later than its own deadline plus one more frame
        summary[name] = {"frames_sent": sent, "frames_late": late, "late_share": late / sent if sent else None,
                         "spacing_ms": stats, "gaps_over_40ms": over}
        rows.append([name, int(sent), int(late), stats["p50"], stats["p99"], stats["p99.9"], stats["max"], over])
    print_table(f"Flood ({only or 'whep + speak'}): {rooms} speaking rooms, {seconds:g} s per phase, "
                f"{workers} flooding connections",
                ["phase", "frames sent", "late", "spacing p50", "p99", "p99.9", "max ms", ">40 ms"], rows)
    requests = data["flood"]["requests"]
    print("flood requests by outcome:", dict(sorted(requests.items())))
    png = plot_distributions("flood" + (f"-{only}" if only else ""), {f"{k}: packet spacing": data[k]["spacing_ms"] for k in ("quiet", "flood")},
                             "ms between packets one frame apart (listener in another room)")
    result = {"rooms": rooms, "seconds": seconds, "workers": workers, "only": only, **summary, "requests": requests,
              "note": "accepted flood WHEP sessions never complete ICE; they linger until aioice gives up (~64 s)",
              "rate_limited_total": sum(v for k, v in requests.items() if k.endswith(" 429")),
              "final_peers_gauge": final.get("tts_peers"), "plot": str(png) if png else None}
    print(f"-> {write_result('flood' + (f'-{only}' if only else ''), result)}")
    return result


def cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__.splitlines()[0])
    p.add_argument("--rooms", type=int, default=3)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--only", choices=["whep", "speak", "datachannel"], help="flood one door only")
    p.add_argument("--flooder", metavar="BASE_URL", help=argparse.SUPPRESS)  # the child process
    args = p.parse_args(argv)
    if args.flooder:
        import json

        if args.only == "datachannel":
            print(json.dumps(asyncio.run(flood_datachannel(args.flooder, args.seconds))))
        else:
            print(json.dumps(asyncio.run(flood(args.flooder, args.seconds, args.workers, args.only))))
    else:
        main(args.rooms, args.seconds, args.workers, args.only)


if __name__ == "__main__":
    sys.exit(cli())

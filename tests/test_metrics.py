"""Observability: /metrics (parsed with prometheus_client's own parser), /readyz semantics,
and structured logs (one JSON object per line, ids attached, nothing per audio frame)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import signal
import subprocess
import sys

import httpx
from prometheus_client.parser import text_string_to_metric_families

from agent.logs import JsonFormatter, TextFormatter, setup_logging
from agent.settings import Settings
from tests.conftest import start_agent, stop_agent
from tests.test_synthesize_http import FailingEngine, GatedEngine, espeak

VOICE = "espeak:en-us"
EXPECTED_FAMILIES = {
    "tts_ttfa_seconds": "histogram", "tts_interrupt_latency_seconds": "histogram", "tts_utterances": "counter",
    "tts_queue_depth": "gauge", "tts_rooms": "gauge", "tts_peers": "gauge", "tts_frames_sent": "counter",
    "tts_frames_late": "counter", "tts_dropped": "counter", "tts_cache": "counter", "tts_synthesis_rtf": "histogram",
    "tts_monotonic_seconds": "gauge",
}


async def scrape(http: httpx.AsyncClient) -> tuple[dict, dict]:
    resp = await http.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    return families, samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_parse_and_move_when_a_room_speaks(running_agent, clients):
    async with httpx.AsyncClient(base_url=running_agent.base_url, timeout=20) as http:
        families, before = await scrape(http)
        for name, kind in EXPECTED_FAMILIES.items():
            assert families[name].type == kind, name
        alice = await clients("lobby")
        resp = await http.post("/v1/rooms/lobby/speak", json={"text": "Counting frames.", "voice": VOICE, "id": "m1"},
                               headers={"Authorization": f"Bearer {running_agent.admin_token()}"})
        assert resp.status_code == 202
        finished = await alice.wait_event("finished", id="m1")
        _, after = await scrape(http)
    frames = finished["audio_ms"] // 20
    assert value(after, "tts_frames_sent_total") - value(before, "tts_frames_sent_total") >= frames
    assert value(after, "tts_utterances_total", outcome="finished") == value(before, "tts_utterances_total", outcome="finished") + 1
    assert value(after, "tts_ttfa_seconds_count", engine="espeak") == value(before, "tts_ttfa_seconds_count", engine="espeak") + 1
    assert value(after, "tts_ttfa_seconds_sum", engine="espeak") > value(before, "tts_ttfa_seconds_sum", engine="espeak")
    assert value(after, "tts_rooms") >= 1 and value(after, "tts_peers") >= 1
    # the agent's own time between the reads: at least the utterance's playout
    assert value(after, "tts_monotonic_seconds") - value(before, "tts_monotonic_seconds") >= finished["audio_ms"] / 1000


async def test_http_protocol_errors_are_counted(running_agent, clients):
    await clients("lobby")
    async with httpx.AsyncClient(base_url=running_agent.base_url) as http:
        _, before = await scrape(http)
        resp = await http.post("/v1/rooms/lobby/speak", json={"text": "x", "voice": "nope:nope"},
                               headers={"Authorization": f"Bearer {running_agent.admin_token()}"})
        assert resp.status_code == 422
        _, after = await scrape(http)
    assert value(after, "tts_errors_total", code="unknown_voice") == value(before, "tts_errors_total", code="unknown_voice") + 1


# -- readiness ---------------------------------------------------------------------------------

class CountingEngine(GatedEngine):
    """The real eSpeak NG engine, counting the streams it is asked for."""

    def __init__(self, inner):
        super().__init__(inner, hold_after=-1)
        self.streams = 0

    def stream(self, text, voice, speed=1.0, sample_rate=None):
        self.streams += 1
        return super().stream(text, voice, speed)


async def test_ready_when_the_engine_answers_and_the_probe_is_cached():
    counting = CountingEngine(espeak())
    running = await start_agent(Settings(voice=VOICE), engines=[counting])
    try:
        async with httpx.AsyncClient(base_url=running.base_url) as http:
            answers = await asyncio.gather(*(http.get("/readyz") for _ in range(3)))
            again = await http.get("/readyz")
        for resp in [*answers, again]:
            assert resp.status_code == 200
            assert resp.json()["voice"] == VOICE and resp.json()["engine"] == "espeak"
        assert counting.streams == 1  # concurrent and repeated checks share one probe
    finally:
        await stop_agent(running)


async def test_not_ready_when_the_engine_fails():
    running = await start_agent(Settings(voice=VOICE), engines=[FailingEngine(espeak(), 0)])
    try:
        async with httpx.AsyncClient(base_url=running.base_url) as http:
            resp = await http.get("/readyz")
            live = await http.get("/healthz")
        assert resp.status_code == 503 and resp.json()["code"] == "not_ready"
        assert "crashed" in resp.json()["detail"] and resp.headers["retry-after"]
        assert live.status_code == 200  # alive, just not ready
    finally:
        await stop_agent(running)


async def test_not_ready_without_voices():
    running = await start_agent(Settings(), engines=[])
    try:
        async with httpx.AsyncClient(base_url=running.base_url) as http:
            resp = await http.get("/readyz")
        assert resp.status_code == 503 and "no voice" in resp.json()["detail"]
    finally:
        await stop_agent(running)


async def test_not_ready_when_rooms_wait_on_a_dead_frame_clock():
    running_agent = await start_agent(Settings(voice=VOICE))
    alice = await running_agent.client("lobby")
    try:
        await _dead_clock(running_agent, alice)
    finally:
        await alice.close()
        await stop_agent(running_agent)


async def _dead_clock(running_agent, alice) -> None:
    async with httpx.AsyncClient(base_url=running_agent.base_url, timeout=20) as http:
        long = "This keeps the frame clock busy for a few seconds while readiness is checked. " * 2
        await http.post("/v1/rooms/lobby/speak", json={"text": long, "id": "busy", "voice": VOICE},
                        headers={"Authorization": f"Bearer {running_agent.admin_token()}"})
        await alice.wait_event("started", id="busy")
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text  # the clock ticks for the speaking room
        clock = running_agent.agent.rooms.clock
        clock._handle.cancel()  # the clock dies (as if it crashed) while the room still waits for frames
        resp = await http.get("/readyz")
        assert resp.status_code == 503 and "frame clock" in resp.json()["detail"]


async def test_not_ready_while_draining(running_agent):
    running_agent.agent.rooms.drain()
    async with httpx.AsyncClient(base_url=running_agent.base_url) as http:
        resp = await http.get("/readyz")
    running_agent.agent.rooms._draining = False  # back, so the fixture's shutdown runs as usual
    assert resp.status_code == 503 and resp.json()["detail"] == "shutting down"


# -- structured logs ---------------------------------------------------------------------------

OUR_LOGGERS = ("agent", "control_api", "engines", "aiortc", "aioice")


async def test_json_logs_one_line_per_event_with_ids_and_nothing_per_frame(running_agent, clients):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    setup_logging("json", "DEBUG")
    out = io.StringIO()
    root.handlers[0].setStream(out)
    try:
        async with httpx.AsyncClient(base_url=running_agent.base_url, timeout=20) as http:
            alice = await clients("lobby", "alice")
            text = "Structured logs say what happened, once, not once per frame. " * 2
            await http.post("/v1/rooms/lobby/speak", json={"text": text, "id": "log1", "voice": VOICE},
                            headers={"Authorization": f"Bearer {running_agent.admin_token()}"})
            finished = await alice.wait_event("finished", id="log1")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = out.getvalue().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    assert any(r["msg"] == "room opened" and r["room"] == "lobby" for r in records)
    assert any(r.get("peer", "").startswith("alice#") and r["room"] == "lobby" for r in records)
    assert any(r.get("utterance") == "log1" and r["room"] == "lobby" for r in records)
    frames = finished["audio_ms"] // 20
    ours = [r for r in records if r["logger"].split(".")[0] in OUR_LOGGERS]
    assert frames > 150
    assert len(ours) < frames / 10, [r["msg"] for r in ours]


def test_json_formatter_keeps_exceptions_and_context_on_one_line():
    record = logging.LogRecord("agent.speaker", logging.ERROR, __file__, 1, "synthesis failed in %s", ("lobby",),
                               None)
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    record.room = "lobby"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["msg"] == "synthesis failed in lobby" and data["room"] == "lobby" and data["level"] == "error"
    assert "ValueError: boom" in data["exc"]


def test_text_formatter_appends_context():
    record = logging.LogRecord("agent.rooms", logging.INFO, __file__, 1, "room opened", (), None)
    record.room = "lobby"
    assert TextFormatter().format(record).endswith("agent.rooms: room opened room=lobby")


def test_serve_with_json_logs_writes_only_json_lines():
    proc = subprocess.Popen([sys.executable, "-m", "agent", "serve", "--port", "0", "--voice", VOICE,
                             "--log-format", "json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        for line in proc.stderr:  # until the server says where it listens
            lines.append(line)
            if "running on http://" in line:
                url = re.search(r"http://[\d.]+:\d+", line).group(0)
                assert httpx.get(f"{url}/readyz", timeout=20).status_code == 200
                break
        proc.send_signal(signal.SIGINT)
        lines += proc.stderr.read().splitlines()
    finally:
        proc.kill()
        proc.wait(10)
    lines = [line for line in lines if line.strip()]
    assert any("running on" in line for line in lines)
    for line in lines:
        json.loads(line)

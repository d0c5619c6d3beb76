"""The spine end to end: a real aiortc peer joins through WHEP and hears real Opus speech."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from agent.audio import FRAME_SAMPLES
from agent.client import decode_opus, rms_db

pytestmark = pytest.mark.e2e

LONG_TEXT = " ".join(["This is a long sentence that keeps the agent talking for a while."] * 12)


async def engine_duration_s(running_agent, text: str, voice_id: str) -> float:
    voice = running_agent.agent.voices.resolve(voice_id)
    engine = running_agent.agent.voices.engine_for(voice)
    samples = 0
    rate = voice.sample_rate
    async for chunk in engine.stream(text, voice, 1.0):
        samples += len(chunk.pcm)
        rate = chunk.sample_rate
    return samples / rate


async def test_client_hears_what_the_engine_produced(running_agent, clients):
    c = await clients("spine")
    assert c.ready.result()["room"] == "spine"
    text = "Hello there. This sentence travels through real WebRTC as Opus."
    c.send({"type": "synthesize", "id": "hello", "text": text, "voice": "espeak:en-us"})
    queued = await c.wait_event("queued", id="hello")
    started = await c.wait_event("started", id="hello")
    finished = await c.wait_event("finished", id="hello")
    assert queued["position"] == 0
    assert started["ttfa_ms"] > 0
    order = [e["type"] for e in c.events if e.get("id") == "hello" and e["type"] in ("queued", "started", "finished")]
    assert order == ["queued", "started", "finished"]
    # every packet of the utterance has arrived once the stream of timestamps is complete
    expected_packets = -(-finished["audio_ms"] // 20)
    while len(c.packets) < expected_packets:
        await c.wait_packet(c.packets[-1].arrival if c.packets else 0.0, timeout=5)
    pcm = decode_opus([p.payload for p in c.packets])
    assert rms_db(pcm) > -40, "received audio is silent"
    received_s = len(c.packets) * FRAME_SAMPLES / 48000
    produced_s = await engine_duration_s(running_agent, text, "espeak:en-us")
    assert abs(received_s - produced_s) / produced_s < 0.10, (received_s, produced_s)


async def test_interrupt_stops_speech_packets(clients):
    c = await clients("interrupt")
    c.send({"type": "synthesize", "id": "long", "text": LONG_TEXT})
    await c.wait_event("started", id="long")
    # let some speech flow, measured in packets rather than time
    await c.wait_packet(0.0)
    while len(c.packets) < 10:
        await c.wait_packet(c.packets[-1].arrival)
    last_ts_before = max(p.timestamp for p in c.packets)
    t_interrupt = c.send({"type": "interrupt"})
    interrupted = await c.wait_event("interrupted", id="long")
    assert interrupted["reason"] == "interrupt"
    # a second utterance marks the end of the first one's packets
    c.send({"type": "synthesize", "id": "next", "text": "Next."})
    await c.wait_event("started", id="next")
    first_next = await c.wait_packet(t_interrupt)
    while first_next.timestamp <= last_ts_before:
        first_next = await c.wait_packet(first_next.arrival)
    # packets of "long" sent after the interrupt: those between the last one seen before it
    # and the first packet of "next" — at most one in flight plus the faded frame
    late = [p for p in c.packets if last_ts_before < p.timestamp < first_next.timestamp]
    # the gap between utterances can hold packets only if they belong to "long"
    late_long = [p for p in late if p.arrival < first_next.arrival]
    assert len(late_long) <= 2, [p.timestamp - last_ts_before for p in late_long]
    packets_long = [p for p in c.packets if p.timestamp <= last_ts_before] + late_long
    assert abs(interrupted["played_ms"] - 20 * len(packets_long)) <= 40


async def test_peers_of_a_room_get_the_same_packets_and_rooms_are_independent(clients):
    a = await clients("shared", "a")
    b = await clients("shared", "b")
    other = await clients("elsewhere", "c")
    a.send({"type": "synthesize", "id": "s1", "text": "Both of you hear exactly this."})
    fin_a = await a.wait_event("finished", id="s1")
    await b.wait_event("finished", id="s1")
    n = -(-fin_a["audio_ms"] // 20)
    for c in (a, b):
        while len(c.packets) < n:
            await c.wait_packet(c.packets[-1].arrival if c.packets else 0.0, timeout=5)
    # encoded once per room: both peers receive byte-identical Opus payloads, in order
    assert [p.payload for p in a.packets[:n]] == [p.payload for p in b.packets[:n]]
    # the other room hears nothing of it; its own utterance is its own
    other.send({"type": "synthesize", "id": "o1", "text": "Another room."})
    fin_o = await other.wait_event("finished", id="o1")
    assert not any(e.get("id") == "s1" for e in other.events)
    assert not any(e.get("id") == "o1" for e in a.events)
    m = -(-fin_o["audio_ms"] // 20)
    while len(other.packets) < m:
        await other.wait_packet(other.packets[-1].arrival if other.packets else 0.0, timeout=5)
    assert len(other.packets) == m


async def test_critical_preempts_normal(clients):
    c = await clients("preempt")
    c.send({"type": "synthesize", "id": "n", "text": LONG_TEXT})
    await c.wait_event("started", id="n")
    c.send({"type": "synthesize", "id": "c", "text": "Breaking news.", "priority": "critical"})
    interrupted = await c.wait_event("interrupted", id="n")
    assert interrupted["reason"] == "preempted"
    await c.wait_event("started", id="c")
    await c.wait_event("finished", id="c")
    types = [(e["type"], e.get("id")) for e in c.events]
    assert types.index(("interrupted", "n")) < types.index(("started", "c"))
    assert ("finished", "n") not in types


async def test_bad_input_gets_errors_and_playing_utterance_continues(running_agent, clients):
    c = await clients("bad")
    c.send({"type": "synthesize", "id": "keep", "text": "I keep talking whatever you send me meanwhile."})
    await c.wait_event("started", id="keep")
    too_long = "x" * (running_agent.agent.settings.max_text_chars + 1)
    bad = [
        ("this is not json", "bad_message"),
        ('{"type": "sing"}', "bad_message"),
        ('{"type": "synthesize", "text": "hi", "priorty": "high"}', "bad_message"),
        ('[1, 2]', "bad_message"),
        ('{"type": "synthesize", "text": "' + too_long + '"}', "text_too_long"),
        ('{"type": "synthesize", "text": "hi", "voice": "nope:nothing"}', "unknown_voice"),
        ('{"type": "interrupt", "id": "ghost"}', "unknown_utterance"),
    ]
    for raw, _ in bad:
        c.send(raw)
    c.send({"type": "ping", "t": 42})
    await c.wait_event("pong", t=42)
    errors = c.events_of("error")
    assert [e["code"] for e in errors] == [code for _, code in bad]
    finished = await c.wait_event("finished", id="keep")
    assert not c.events_of("interrupted")
    assert finished["audio_ms"] > 1500


async def test_whep_refusals(running_agent):
    url = f"{running_agent.base_url}/v1/rooms/locked/whep"
    offer_headers = {"Content-Type": "application/sdp"}
    async with httpx.AsyncClient() as http:
        r = await http.post(url, content="v=0\r\n", headers=offer_headers)
        assert r.status_code == 401 and r.json()["status"] == 401
        other = running_agent.token("another-room")
        r = await http.post(url, content="v=0\r\n", headers={**offer_headers, "Authorization": f"Bearer {other}"})
        assert r.status_code == 403 and "another-room" in r.json()["detail"]
        token = running_agent.token("locked")
        auth = {**offer_headers, "Authorization": f"Bearer {token}"}
        r = await http.post(url, content="garbage that is not SDP", headers=auth)
        assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json")
        r = await http.post(url, content="v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nthis is broken", headers=auth)
        assert r.status_code == 400
        huge = "v=0\r\n" + "a=x\r\n" * 200_000
        r = await http.post(url, content=huge, headers=auth)
        assert r.status_code == 413
    # nothing was left behind by the refused offers
    assert running_agent.agent.webrtc.sessions == {}
    room = running_agent.agent.rooms.get("locked")
    assert room is None or not room.peers


async def test_session_delete_and_room_cleanup(running_agent):
    from tests.conftest import start_agent, stop_agent
    from agent.settings import Settings

    running = await start_agent(Settings(room_grace_s=0))
    try:
        c = await running.client("ephemeral")
        assert running.agent.rooms.get("ephemeral") is not None
        await c.close()
        # the room closes once its last peer is gone (grace 0): wait on the registry
        for _ in range(200):
            if running.agent.rooms.get("ephemeral") is None:
                break
            await asyncio.sleep(0.01)
        assert running.agent.rooms.get("ephemeral") is None
        assert running.agent.webrtc.sessions == {}
    finally:
        await stop_agent(running)

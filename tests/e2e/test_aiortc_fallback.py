"""aiortc's private internals, each one gone: real peers still hear the room, events still
arrive, speech still interrupts, and one log line says which fast path is off.

A rename is made where the agent looks for the name (`aiortc_fast.PRIVATE`): the real probe
then runs against real aiortc objects and finds the attribute missing, exactly as it would
on an aiortc where the attribute was renamed. Nothing stubs the probe.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

from agent.client import decode_opus, rms_db
from agent.transports import aiortc_fast
from bench.barge_in import MicrophoneTrack, espeak_speech
from tests.conftest import shared_engines, start_agent, stop_agent

pytestmark = pytest.mark.e2e

TEXT = "Hello there."
LONG_TEXT = " ".join(["The agent reads a long story about the sea, the wind and the boats."] * 10)


def _renamed(path: str, index: int) -> list:
    names = list(aiortc_fast.PRIVATE[path])
    where, attr, params = names[index]
    names[index] = (where, attr + "_renamed", params)
    return names


def _probe_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == aiortc_fast.__name__ and "fast paths" in r.getMessage()]


async def _hears(running, room: str) -> None:
    c = await running.client(room)
    try:
        c.send({"type": "synthesize", "id": "x", "text": TEXT})
        finished = await c.wait_event("finished", id="x")  # events arrived: the data channel works
        expected = -(-finished["audio_ms"] // 20)
        while len(c.packets) < expected:
            await c.wait_packet(c.packets[-1].arrival if c.packets else 0.0, timeout=5)
        assert rms_db(decode_opus([p.payload for p in c.packets])) > -40
    finally:
        await c.close()


CASES = [(path, i) for path in ("rtp", "sctp") for i in range(len(aiortc_fast.PRIVATE[path]))]


async def test_each_private_name_missing_turns_its_fast_path_off_and_peers_still_hear(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=aiortc_fast.__name__)
    running = await start_agent()
    try:
        for path, index in CASES:
            monkeypatch.setitem(aiortc_fast.PRIVATE, path, _renamed(path, index))
            aiortc_fast.reset_probe()
            caplog.clear()
            await _hears(running, f"{path}-{index}")
            lines = _probe_lines(caplog)
            name = aiortc_fast.PRIVATE[path][index][1]
            assert len(lines) == 1 and f"{path} off" in lines[0] and name in lines[0], (path, index, lines)
            assert getattr(aiortc_fast.fast_paths(), path) is False
            monkeypatch.undo()
        aiortc_fast.reset_probe()
        caplog.clear()
        await _hears(running, "all-on")
        lines = _probe_lines(caplog)
        assert len(lines) == 1 and "fast paths on" in lines[0], lines
    finally:
        aiortc_fast.reset_probe()
        await stop_agent(running)


async def test_without_the_receive_hook_speech_still_interrupts(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=aiortc_fast.__name__)
    monkeypatch.setitem(aiortc_fast.PRIVATE, "rtp_tap", _renamed("rtp_tap", 0))
    aiortc_fast.reset_probe()
    sentence = await espeak_speech(shared_engines(), "Sorry, wait a moment, I have a question about that.")
    running = await start_agent()
    try:
        assert aiortc_fast.fast_paths().rtp_tap is False
        lines = _probe_lines(caplog)
        assert len(lines) == 1 and "rtp_tap off" in lines[0], lines
        mic = MicrophoneTrack()
        c = await running.client("barge-public", send_audio=mic)
        c.send({"type": "configure", "barge_in": {"mode": "interrupt"}})
        c.send({"type": "synthesize", "id": "long", "text": LONG_TEXT, "voice": "espeak:en-us"})
        await c.wait_event("started", id="long")
        mic.play(np.concatenate([np.zeros(9600, np.int16), sentence]))
        interrupted = await asyncio.wait_for(c.wait_event("interrupted", id="long"), 20)
        assert interrupted["reason"] == "barge_in"
        (session,) = running.agent.webrtc.sessions.values()
        assert session.listen_task is not None, "the public path reads the track"
        await c.close()
    finally:
        aiortc_fast.reset_probe()
        await stop_agent(running)

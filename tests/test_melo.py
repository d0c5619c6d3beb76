"""MeloTTS is not installed here: the engine says so with the install hint, lists nothing,
raises a clear EngineError if asked to speak, and the process goes on."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from engines.base import EngineError, Voice
from engines.melo import MeloEngine, parse_checkpoints

melo_installed = importlib.util.find_spec("melo") is not None


@pytest.mark.skipif(melo_installed, reason="MeloTTS is installed on this machine")
async def test_unavailable_with_reason_and_nothing_crashes():
    engine = MeloEngine()
    assert not engine.available
    assert "MeloTTS is not installed" in engine.unavailable_reason
    assert "MeloTTS#41" in engine.unavailable_reason  # why it is not a plain pip install
    assert engine.voices() == []
    voice = Voice("melo:EN-US", "melo", "en-us", "MeloTTS EN-US", 44100, neural=True)
    with pytest.raises(EngineError, match="not installed"):
        async for _ in engine.stream("hello", voice):
            pass


@pytest.mark.skipif(melo_installed, reason="MeloTTS is installed on this machine")
def test_listed_as_unavailable_in_the_control_plane():
    from fastapi.testclient import TestClient

    from agent.runtime import Agent
    from agent.settings import Settings
    from control_api import create_app
    from tests.conftest import shared_engines

    with TestClient(create_app(Agent(Settings(), shared_engines())), base_url="http://127.0.0.1") as client:
        engines = {e["name"]: e for e in client.get("/v1/engines").json()}
    assert engines["melo"]["available"] is False
    assert "MeloTTS is not installed" in engines["melo"]["reason"]
    assert engines["piper"]["available"] is True and engines["espeak"]["available"] is True


def test_checkpoint_spec_parsing():
    assert parse_checkpoints("EN=/a; zh=/b ;") == {"EN": Path("/a"), "ZH": Path("/b")}
    with pytest.raises(ValueError, match="LANGUAGE=/path"):
        parse_checkpoints("EN")


@pytest.mark.skipif(not melo_installed, reason="needs MeloTTS installed")
def test_checkpoint_folder_lists_speakers(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"data": {"sampling_rate": 44100,
                                                               "spk2id": {"EN-US": 0, "EN-BR": 1}}}))
    (tmp_path / "checkpoint.pth").write_bytes(b"")
    engine = MeloEngine({"EN": tmp_path})
    assert {(v.id, v.language) for v in engine.voices()} == {("melo:EN-US", "en-us"), ("melo:EN-BR", "en-gb")}

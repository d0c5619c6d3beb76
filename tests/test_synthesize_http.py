"""POST /v1/synthesize: real eSpeak NG audio rendered to WAV, Ogg Opus and MP3 by PyAV,
decoded again by PyAV, and streamed while synthesis is still going on."""

from __future__ import annotations

import asyncio
import io

import av
import httpx
import numpy as np
import pytest

from agent.settings import Settings
from engines.base import EngineError
from tests.conftest import shared_engines, start_agent, stop_agent

VOICE = "espeak:en-us"
TEXT = "Welcome to the stream. Tonight we read the chat aloud."
LONG_TEXT = " ".join(f"This is sentence number {i} of a long announcement, read slowly." for i in range(12))


def espeak():
    return next(e for e in shared_engines() if e.name == "espeak")


class GatedEngine:
    """The real eSpeak NG engine, held after `hold_after` chunks until `release` is set: while
    it is held, synthesis of the text is provably unfinished."""

    def __init__(self, inner, hold_after: int):
        self.inner = inner
        self.name = inner.name
        self.hold_after = hold_after
        self.produced = 0
        self.finished = False
        self.closed = asyncio.Event()
        self.release = asyncio.Event()

    @property
    def available(self) -> bool:
        return self.inner.available

    @property
    def unavailable_reason(self):
        return self.inner.unavailable_reason

    def voices(self):
        return self.inner.voices()

    async def stream(self, text, voice, speed=1.0, sample_rate=None):
        inner = self.inner.stream(text, voice, speed)
        try:
            async for chunk in inner:
                if self.produced == self.hold_after:
                    await self.release.wait()
                self.produced += 1
                yield chunk
            self.finished = True
        finally:
            await inner.aclose()
            self.closed.set()


class FailingEngine(GatedEngine):
    """Fault injection: eSpeak NG's voices, but synthesis raises (the real engine does not fail on demand)."""

    async def stream(self, text, voice, speed=1.0, sample_rate=None):
        raise EngineError("the synthesizer crashed")
        yield  # pragma: no cover


async def engine_pcm(text: str, voice_id: str = VOICE, speed: float = 1.0) -> tuple[np.ndarray, int]:
    """What the engine itself makes of the text: the reference for every format."""
    engine = espeak()
    voice = next(v for v in engine.voices() if v.id == voice_id)
    chunks = [c async for c in engine.stream(text, voice, speed)]
    return np.concatenate([c.pcm for c in chunks]), chunks[0].sample_rate


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Decode with PyAV (libavformat/libavcodec); mono int16."""
    with av.open(io.BytesIO(data)) as container:
        resampler = None
        out = []
        rate = container.streams.audio[0].sample_rate
        for frame in container.decode(audio=0):
            if resampler is None:
                resampler = av.AudioResampler(format="s16", layout="mono", rate=frame.sample_rate)
            for f in resampler.resample(frame):
                out.append(f.to_ndarray().reshape(-1))
    return (np.concatenate(out) if out else np.zeros(0, np.int16)), rate


def decoded_seconds(data: bytes) -> float:
    try:
        pcm, rate = decode(data)
    except (av.FFmpegError, IndexError):  # not enough bytes yet to find a stream
        return 0.0
    return len(pcm) / rate


@pytest.fixture
async def api(running_agent):
    async with httpx.AsyncClient(base_url=running_agent.base_url, timeout=30,
                                 headers={"Authorization": f"Bearer {running_agent.admin_token()}"}) as client:
        yield client


async def test_wav_is_the_engines_pcm_with_a_streaming_header(api):
    resp = await api.post("/v1/synthesize", json={"text": TEXT, "voice": VOICE, "format": "wav"})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "audio/wav"
    assert resp.headers["content-disposition"] == 'attachment; filename="speech.wav"'
    assert resp.headers["x-voice"] == VOICE
    body = resp.content
    assert body[:4] == b"RIFF" and body[8:12] == b"WAVE"
    # written before the length was known: open-ended sizes, which decoders read to the end
    assert body[4:8] == b"\xff\xff\xff\xff"
    pcm, rate = decode(body)
    expected, expected_rate = await engine_pcm(TEXT)
    assert rate == expected_rate
    assert np.array_equal(pcm, expected)  # sample for sample what eSpeak NG made


@pytest.mark.parametrize("fmt, media_type, magic, rate, slack_s", [
    # Opus in Ogg: the pre-skip and the end granule trim the codec's padding exactly
    ("ogg", "audio/ogg", b"OggS", 48_000, 0.002),
    # MP3: a streamed file carries no LAME gapless header (that is written at the end, by seeking),
    # so decoders keep the encoder delay (1105 samples) and the last frame's padding: < 2 frames
    ("mp3", "audio/mpeg", b"ID3", 22_050, 2 * 1152 / 22_050),
])
async def test_compressed_formats_decode_to_the_engines_duration(api, fmt, media_type, magic, rate, slack_s):
    resp = await api.post("/v1/synthesize", json={"text": TEXT, "voice": VOICE, "format": fmt})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == media_type
    assert resp.headers["content-disposition"] == f'attachment; filename="speech.{fmt}"'
    assert resp.content.startswith(magic)
    pcm, decoded_rate = decode(resp.content)
    assert decoded_rate == rate
    expected, expected_rate = await engine_pcm(TEXT)
    expected_s = len(expected) / expected_rate
    got_s = len(pcm) / decoded_rate
    assert expected_s - 0.002 <= got_s <= expected_s + slack_s
    assert np.abs(pcm.astype(np.int32)).max() > 1000  # speech, not silence


async def test_speed_changes_the_duration(api):
    slow = await api.post("/v1/synthesize", json={"text": TEXT, "voice": VOICE, "speed": 0.5})
    fast = await api.post("/v1/synthesize", json={"text": TEXT, "voice": VOICE, "speed": 2.0})
    expected_slow, rate = await engine_pcm(TEXT, speed=0.5)
    assert len(decode(slow.content)[0]) == len(expected_slow)
    assert decoded_seconds(fast.content) < decoded_seconds(slow.content) / 2


async def test_language_tag_picks_a_voice(running_agent, api):
    resp = await api.post("/v1/synthesize", json={"text": "你好，欢迎。", "voice": "zh", "format": "ogg"})
    assert resp.status_code == 200
    chosen = running_agent.agent.voices.get(resp.headers["x-voice"])
    assert chosen is not None
    assert chosen.language in ("cmn", "zh") or chosen.language.startswith(("cmn-", "zh-"))
    assert decoded_seconds(resp.content) > 0.3


@pytest.mark.parametrize("fmt", ["wav", "ogg", "mp3"])
async def test_audio_arrives_before_synthesis_of_a_long_text_has_finished(fmt):
    gated = GatedEngine(espeak(), hold_after=15)  # 15 chunks: 0.6 s of speech
    running = await start_agent(Settings(voice=VOICE), engines=[gated])
    try:
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            headers = {"Authorization": f"Bearer {running.admin_token()}"}
            async with client.stream("POST", "/v1/synthesize", headers=headers,
                                     json={"text": LONG_TEXT, "format": fmt}) as resp:
                assert resp.status_code == 200
                received = b""
                pieces = resp.aiter_raw()
                # The engine cannot go past chunk 15 until we release it, so this loop ends
                # only if decodable audio is sent while synthesis is held. A server that
                # buffered the whole file would leave us waiting here (and time out).
                while decoded_seconds(received) < 0.2:
                    received += await asyncio.wait_for(anext(pieces), 20)
                assert gated.produced <= gated.hold_after
                assert not gated.finished
                gated.release.set()
                async for piece in pieces:
                    received += piece
        assert gated.finished and gated.produced > gated.hold_after
        expected, rate = await engine_pcm(LONG_TEXT)
        assert decoded_seconds(received) == pytest.approx(len(expected) / rate, abs=0.11)
    finally:
        gated.release.set()
        await stop_agent(running)


async def test_client_hanging_up_stops_synthesis():
    gated = GatedEngine(espeak(), hold_after=5)
    running = await start_agent(Settings(voice=VOICE), engines=[gated])
    try:
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            headers = {"Authorization": f"Bearer {running.admin_token()}"}
            async with client.stream("POST", "/v1/synthesize", headers=headers,
                                     json={"text": LONG_TEXT, "format": "wav"}) as resp:
                assert resp.status_code == 200
                await asyncio.wait_for(anext(resp.aiter_raw()), 20)
            # leaving the block closed the connection mid-body
        await asyncio.wait_for(gated.closed.wait(), 20)
        assert not gated.finished
    finally:
        await stop_agent(running)


async def test_refusals_are_problem_json(running_agent, api):
    limit = running_agent.agent.settings.max_text_chars
    cases = [
        ({"text": "x" * (limit + 1)}, 422, "text_too_long", ["body", "text"]),
        ({"text": "hello", "voice": "nope:none"}, 422, "unknown_voice", ["body", "voice"]),
        ({"text": ""}, 422, "bad_message", ["body", "text"]),
        ({"text": "hello", "format": "flac"}, 422, "bad_message", ["body", "format"]),
        ({"text": "hello", "speed": 3}, 422, "bad_message", ["body", "speed"]),
        ({"text": "hello", "colour": "red"}, 422, "bad_message", ["body", "colour"]),
    ]
    for body, status, code, loc in cases:
        resp = await api.post("/v1/synthesize", json=body)
        assert resp.status_code == status, body
        assert resp.headers["content-type"] == "application/problem+json"
        problem = resp.json()
        assert problem["status"] == status and problem["code"] == code and problem["title"] and problem["detail"]
        assert problem["type"].endswith(code)
        assert problem["errors"][0]["loc"] == loc, body


async def test_synthesize_needs_an_admin_token(running_agent):
    async with httpx.AsyncClient(base_url=running_agent.base_url) as client:
        none = await client.post("/v1/synthesize", json={"text": "hi"})
        room = await client.post("/v1/synthesize", json={"text": "hi"},
                                 headers={"Authorization": f"Bearer {running_agent.token('lobby')}"})
    assert none.status_code == 401 and none.json()["detail"] == "missing bearer token"
    assert room.status_code == 403 and "roomAdmin" in room.json()["detail"]


async def test_an_engine_failing_before_any_audio_is_503():
    failing = FailingEngine(espeak(), hold_after=0)
    running = await start_agent(Settings(voice=VOICE), engines=[failing])
    try:
        async with httpx.AsyncClient(base_url=running.base_url) as client:
            resp = await client.post("/v1/synthesize", json={"text": "hello"},
                                     headers={"Authorization": f"Bearer {running.admin_token()}"})
        assert resp.status_code == 503
        assert resp.json()["code"] == "engine_error" and "crashed" in resp.json()["detail"]
    finally:
        await stop_agent(running)


async def test_synthesize_is_rate_limited_per_token():
    running = await start_agent(Settings(rate_limit_per_min=6))  # a burst of 1, then one per 10 s
    try:
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            first_token, second_token = running.admin_token(), running.agent.tokens.mint("other", admin=True)
            ok = await client.post("/v1/synthesize", json={"text": "one", "voice": VOICE},
                                   headers={"Authorization": f"Bearer {first_token}"})
            limited = await client.post("/v1/synthesize", json={"text": "two", "voice": VOICE},
                                        headers={"Authorization": f"Bearer {first_token}"})
            other = await client.post("/v1/synthesize", json={"text": "three", "voice": VOICE},
                                      headers={"Authorization": f"Bearer {second_token}"})
        assert ok.status_code == 200
        assert limited.status_code == 429
        assert limited.json()["code"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 10
        assert other.status_code == 200  # the limit counts per token
    finally:
        await stop_agent(running)


@pytest.mark.parametrize("out_rate", [22_050, 16_000, 24_000])
def test_a_voice_at_another_rate_is_resampled_to_the_files_rate_not_to_48k(out_rate):
    """A fallback voice's chunks at 16 kHz into a 22.05 kHz file: one second stays one second
    at the file's rate, and a 440 Hz tone stays 440 Hz."""
    from control_api.routers.synthesize import RateMatch

    rate_in = 16_000
    tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(rate_in) / rate_in)).astype(np.int16)
    match = RateMatch(out_rate)
    out = np.concatenate([match.push(tone[i:i + 1600], rate_in) for i in range(0, rate_in, 1600)] + [match.flush()])
    assert abs(len(out) - out_rate) <= out_rate // 100, len(out)
    spectrum = np.abs(np.fft.rfft(out.astype(np.float64)))
    peak_hz = np.argmax(spectrum) * out_rate / len(out)
    assert abs(peak_hz - 440) < 5, peak_hz

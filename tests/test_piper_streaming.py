"""Piper streaming within a sentence: the graph split at load, windows stitched against whole
decoding of the same latent (noise scales 0, so runs are deterministic), the whole-piece
fallback, leading silence, and word captions from the duration predictor through the Speaker
(fake clock)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import engines.vits_stream as vits_stream
from agent.audio import FRAME_SAMPLES, SAMPLE_RATE
from engines.piper import STREAMING, PiperEngine
from engines.vits_stream import PROBE_TOLERANCE, SplitVits, stitch_error
from engines.word_timing import text_words
from tests.piper_models import write_tiny_vits_voice, write_tiny_voice
from tests.speaker_harness import Stage

JOE = "piper:en_US-joe-medium"
NO_NOISE = np.array([0.0, 1.0, 0.0], np.float32)
SENTENCES = [
    "Hello there.",
    "This is sentence number 0, spoken for timing.",
    "The quick brown fox jumps over the lazy dog while the band plays on and the crowd cheers loudly",
]


@pytest.fixture(scope="module")
def joe():
    engine = PiperEngine([])
    voice = next(v for v in engine.voices() if v.id == JOE)
    model = engine._models[JOE]
    engine._load(model)
    yield engine, voice, model
    engine.close()


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))  # split parts of test voices
    monkeypatch.delenv("TTS_AGENT_VOICES_DIR", raising=False)
    return tmp_path


def _latent(model, text: str, speaker_id=None):
    phonemes = [p for s in model.voice.phonemize(text) for p in s]
    return model.split.encode(model.voice.phonemes_to_ids(phonemes), NO_NOISE, speaker_id)


def test_joe_windows_stitch_like_whole_decoding(joe):
    _, _, model = joe
    assert model.split is not None and model.split.hop == 256
    for text in SENTENCES:
        latent = _latent(model, text)
        whole = model.split.decode_whole(latent)
        windows = list(model.split.decode(latent))
        assert len(windows) >= 2  # it did stream
        assert len(windows[0]) < len(whole) / 2  # the first window is small
        assert stitch_error(whole, np.concatenate(windows)) <= 0.01, text


def test_tiny_multi_speaker_voice_splits_and_stitches(tmp_path):
    import onnxruntime

    path = write_tiny_vits_voice(tmp_path, speakers=("alice", "bob", "carol"))
    split = SplitVits(str(path), onnxruntime.SessionOptions(), has_speakers=True)
    full = onnxruntime.InferenceSession(str(path))
    ids = [1, 0] + [x for i in range(60) for x in (4 + i % 25, 0)] + [2]
    outs = []
    for sid in (0, 1, 2):
        latent = split.encode(ids, NO_NOISE, sid)
        whole = split.decode_whole(latent)
        stitched = np.concatenate(list(split.decode(latent, first=6, growth=2, largest=24)))
        assert stitch_error(whole, stitched) <= 0.01
        reference = full.run(None, {"input": np.array([ids]), "input_lengths": np.array([len(ids)]),
                                    "scales": NO_NOISE, "sid": np.array([sid])})[0].reshape(-1)
        assert stitch_error(reference, stitched) <= 0.01  # the parts together are the model
        assert latent.durations.sum() * split.hop == len(whole)
        outs.append(stitched)
    assert not np.allclose(outs[0], outs[1])  # the speaker id reached the flow and decoder


def test_windows_without_context_would_not_stitch(tmp_path, monkeypatch):
    """The stitching check can fail: without context the seams show."""
    import onnxruntime

    split = SplitVits(str(write_tiny_vits_voice(tmp_path)), onnxruntime.SessionOptions(), has_speakers=True)
    latent = split.encode([1, 0] + [5, 0, 9, 0, 12, 0] * 20 + [2], NO_NOISE, 1)
    monkeypatch.setattr(vits_stream, "DECODER_CONTEXT", 0)
    monkeypatch.setattr(vits_stream, "FLOW_CONTEXT", 0)
    stitched = np.concatenate(list(split.decode(latent, first=6, growth=2, largest=24)))
    assert stitch_error(split.decode_whole(latent), stitched) > PROBE_TOLERANCE


async def test_graph_that_does_not_split_speaks_whole_pieces(isolated_home, caplog):
    folder = isolated_home / "voices"
    write_tiny_voice(folder, speakers=("a", "b"))  # a tone generator: no decoder to window
    engine = PiperEngine([folder], include_packages=False)
    try:
        voice = engine.voices()[0]
        with caplog.at_level("WARNING", logger="engines.piper"):
            chunks = [c async for c in engine.stream("hello. again.", voice)]
        model = engine._models[voice.id]
        assert model.split is None and model.voice.session is not None
        assert [r.message for r in caplog.records].count(
            next(r.message for r in caplog.records if "does not split" in r.message)) == 1
        assert STREAMING.labels(model.onnx.name)._value.get() == 0
        assert [m.text for c in chunks for m in c.marks if m.kind == "sentence"] == ["hello.", "again."]
        assert sum(len(c.pcm) for c in chunks) > 0
    finally:
        engine.close()


async def test_tiny_vits_voice_streams_through_the_engine(isolated_home):
    folder = isolated_home / "voices"
    write_tiny_vits_voice(folder)
    engine = PiperEngine([folder], include_packages=False)
    try:
        voice = engine.voices()[0]
        chunks = [c async for c in engine.stream("hello there my friend", voice, sample_rate=48000)]
        model = engine._models[voice.id]
        assert model.split is not None and STREAMING.labels(model.onnx.name)._value.get() == 1
        assert [m.text for c in chunks for m in c.marks if m.kind == "word"] == ["hello", "there", "my", "friend"]
        assert all(c.sample_rate == 48000 for c in chunks)
    finally:
        engine.close()


async def test_first_chunk_starts_at_the_first_audible_sample(joe):
    engine, voice, _ = joe
    chunks = [c async for c in engine.stream("Well, hello there. And goodbye.", voice)]
    pcm = np.concatenate([c.pcm for c in chunks]).astype(np.int32)
    margin = int(0.005 * voice.sample_rate)
    first_loud = int(np.flatnonzero(np.abs(pcm) > 300)[0])
    assert first_loud <= margin  # at most the onset margin before the voice
    # the gap between the two sentences is still there: a quiet stretch after the first
    second = next(i for i, c in enumerate(chunks) if any(m.text == "And goodbye." for m in c.marks))
    before = np.concatenate([c.pcm for c in chunks[:second]]).astype(np.int32)
    mark = next(m.sample for m in chunks[second].marks if m.kind == "sentence")
    gap = np.concatenate([before[-int(0.2 * voice.sample_rate):], chunks[second].pcm[:mark + 1].astype(np.int32)])
    quiet = np.abs(gap) < 300
    run = max(len(s) for s in "".join("q" if q else "." for q in quiet).split("."))
    assert run >= int(0.03 * voice.sample_rate)  # at least 30 ms of pause between sentences


class _Spy:
    """The real engine, recording where each word mark lands (absolute 48 kHz sample)."""

    def __init__(self, engine):
        self.engine = engine
        self.name = engine.name
        self.available = True
        self.unavailable_reason = None
        self.words: list[tuple[int, str]] = []

    def voices(self):
        return self.engine.voices()

    async def stream(self, text, voice, speed=1.0, sample_rate=None):
        at = 0
        async for chunk in self.engine.stream(text, voice, speed, sample_rate):
            assert chunk.sample_rate == SAMPLE_RATE
            self.words += [(at + m.sample, m.text) for m in chunk.marks if m.kind == "word"]
            at += len(chunk.pcm)
            yield chunk


async def test_word_captions_from_durations_each_in_the_tick_of_its_first_frame(joe):
    engine, voice, _ = joe
    spy = _Spy(engine)
    stage = Stage(engine=spy)
    stage.speaker.voice = voice
    text = "Streaming voices can caption every word. They start quickly, then keep going."
    stage.send({"type": "synthesize", "id": "w", "text": text})
    speaker = stage.speaker
    for _ in range(20_000):
        utt = speaker.current
        # wait (on the real worker threads) until this slot's frame is there or synthesis ended
        while utt is not None and utt.buffer.available < FRAME_SAMPLES and not utt.synth_done:
            await asyncio.sleep(0.005)
        stage.tick()
        if speaker.idle:
            break
    first_tick = stage.frames[0][0]
    captions = [(t, e) for t, e in stage.events if e["type"] == "caption" and e["kind"] == "word"]
    assert [e["text"] for _, e in captions] == text_words(text)  # every word, once, in order
    offsets = [e["offset_ms"] for _, e in captions]
    assert all(a < b for a, b in zip(offsets, offsets[1:]))
    assert [w for _, w in spy.words] == text_words(text)
    for (tick, event), (at, _) in zip(captions, spy.words):
        assert tick == first_tick + at // FRAME_SAMPLES, event  # the tick that plays its first frame
    finished = stage.tick_of("finished", id="w")
    last_caption = max(i for i, (_, e) in enumerate(stage.events) if e["type"] == "caption")
    assert last_caption < next(i for i, (_, e) in enumerate(stage.events) if e["type"] == "finished")
    assert captions[-1][0] <= finished


async def _play(stage, until, max_ticks: int = 20_000) -> None:
    """Tick the stage, waiting on the real worker threads for each slot's frame, until `until()`."""
    speaker = stage.speaker
    for _ in range(max_ticks):
        if until():
            return
        utt = speaker.current
        while utt is not None and utt.buffer.available < FRAME_SAMPLES and not utt.synth_done \
                and speaker.current is utt:
            await asyncio.sleep(0.005)
        stage.tick()
    raise AssertionError("condition never met")


async def test_interrupt_in_a_long_sentence_frees_the_worker_within_one_window():
    engine = PiperEngine([], workers=1)  # one worker: the next utterance needs the old one's thread
    try:
        voice = next(v for v in engine.voices() if v.id == JOE)
        await engine.warm(voice)
        model = engine._models[JOE]
        runs: list[int] = []  # id of the latent each decoded window belongs to
        original = model.split.decode

        def spying(latent, **kw):  # a spy on the real windowed decoding
            for audio in original(latent, **kw):
                runs.append(id(latent))
                yield audio

        model.split.decode = spying
        stage = Stage(engine=engine)
        stage.speaker.voice = voice
        long_text = " ".join(["and the long sentence goes on without any stop"] * 12)
        stage.send({"type": "synthesize", "id": "long", "text": long_text})
        await _play(stage, lambda: len(stage.frames) >= 10)
        old = runs[0]
        windows_before = runs.count(old)
        stage.send({"type": "interrupt"})
        fade_tick = stage.tick_no + 1
        stage.send({"type": "synthesize", "id": "next", "text": "Next one."})
        await _play(stage, lambda: stage.speaker.idle)
        assert stage.of("interrupted", id="long") and stage.of("finished", id="next")
        # at most the window in flight ran for the old sentence after the interrupt
        assert runs.count(old) <= windows_before + 1
        assert runs[-1] != old and len(set(runs)) >= 2  # the worker went on to the next one
        # after the faded frame only the next utterance's audio: its frames, nothing else
        after = [t for t, _ in stage.frames if t >= fade_tick]
        next_ms = stage.of("finished", id="next")[0]["audio_ms"]
        # audio_ms is floored: the utterance had between next_ms * 48 and next_ms * 48 + 47 samples
        possible = {-(-(next_ms * 48 + extra) // 960) for extra in (0, 47)}
        assert len(after) - 1 in possible, (len(after), next_ms)
    finally:
        engine.close()


async def test_rooms_take_turns_on_the_synthesis_threads(isolated_home):
    """Two long messages on one worker: windows alternate between them (each stream keeps at
    most one job in the pool's first-come-first-served queue), so one room cannot starve
    another however long its text."""
    folder = isolated_home / "voices"
    write_tiny_vits_voice(folder)
    engine = PiperEngine([folder], include_packages=False, workers=1)
    try:
        voice = engine.voices()[0]
        await engine.warm(voice)
        order: list[str] = []
        original = engine._stream_piece

        streams: dict[int, str] = {}  # the stream's output object -> the word it started with

        def spying(model, voice_, piece, speaker_id, speed, out, *args, **kwargs):  # a spy on the real method
            name = streams.setdefault(id(out), piece.split()[0])
            for chunk in original(model, voice_, piece, speaker_id, speed, out, *args, **kwargs):
                order.append(name)
                yield chunk

        engine._stream_piece = spying

        async def consume(word: str) -> None:
            text = " ".join([f"{word} is a room that talks and talks without end"] * 40)
            async for _ in engine.stream(text, voice):
                pass

        await asyncio.gather(consume("alpha"), consume("beta"))
        both = order[: max(i for i, w in enumerate(order) if w != order[-1]) + 1]  # while both ran
        assert {"alpha", "beta"} <= set(both) and len(both) > 10
        runs = "".join("a" if w == "alpha" else "b" for w in both)
        assert max(len(r) for r in runs.replace("ab", "a b").replace("ba", "b a").split()) <= 2, runs
    finally:
        engine.close()


def test_split_parts_are_cached_and_reused(tmp_path, monkeypatch):
    """The second load reads the parts from the cache instead of cutting the graph again."""
    import onnxruntime

    import engines.vits_stream as vs

    path = write_tiny_vits_voice(tmp_path / "voice")
    cache = tmp_path / "cache"
    first = SplitVits(str(path), onnxruntime.SessionOptions(), has_speakers=True, cache_root=cache)
    (folder,) = cache.iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["decoder.onnx", "flow.onnx", "meta.json", "phonemes.onnx"]

    def no_split(model_path):
        raise AssertionError("the graph was split again")

    monkeypatch.setattr(vs, "split_graph", no_split)
    second = SplitVits(str(path), onnxruntime.SessionOptions(), has_speakers=True, cache_root=cache)
    latent = second.encode([1, 0, 5, 0, 9, 0, 2], NO_NOISE, 1)
    assert np.array_equal(first.decode_whole(latent), second.decode_whole(latent))

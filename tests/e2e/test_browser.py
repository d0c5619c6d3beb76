"""Headless Chromium drives the web demo against a real agent: WHEP, Opus, the `tts` data channel,
Web Audio on the received track. Nothing is mocked: the page talks to uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest
from playwright.async_api import Page, async_playwright

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",  # a beeping fake microphone
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",  # the agent offers only 127.0.0.1 candidates
]
WAIT_MS = 15_000
SENTENCE = "The quick brown fox jumps over the lazy dog."


@pytest.fixture
async def open_page():
    """Opens a page in a fresh headless Chromium (fresh profile); extra flags per call."""
    async with async_playwright() as p:
        browsers = []

        async def open_(*extra_args: str) -> Page:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + list(extra_args))
            browsers.append(browser)
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            return await context.new_page()

        try:
            yield open_
        finally:
            for browser in browsers:
                await browser.close()


@pytest.fixture
async def page(open_page):
    return await open_page()


async def join_demo(page: Page, base_url: str, room: str) -> None:
    await page.goto(f"{base_url}/demo?room={room}")
    await page.click("#join")
    await page.wait_for_function("window.demo.state === 'joined'", timeout=WAIT_MS)


async def speak_from_page(page: Page, text: str) -> str:
    """Type and press Speak; returns the id the page gave the utterance."""
    before = set(await page.evaluate("Object.keys(window.demo.utterances)"))
    await page.fill("#text", text)
    await page.click("#speak")
    after = set(await page.evaluate("Object.keys(window.demo.utterances)"))
    (uid,) = after - before
    return uid


async def wait_fate(page: Page, uid: str, fate: str) -> None:
    await page.wait_for_selector(f'#utterances tr[data-id="{uid}"][data-fate="{fate}"]', timeout=WAIT_MS)


async def test_demo_speaks_and_interrupts(running_agent, page):
    await join_demo(page, running_agent.base_url, "web-demo")
    # the voice list comes from GET /v1/voices, with language tags as well as voice ids
    options = await page.eval_on_selector_all("#voice option", "os => os.map(o => o.value)")
    assert "espeak:en-us" in options and "en" in options
    await page.select_option("#voice", "espeak:en-us")

    uid = await speak_from_page(page, SENTENCE)
    await wait_fate(page, uid, "finished")
    types = await page.evaluate(f"window.demo.events.filter(e => e.id === {uid!r}).map(e => e.type)")
    assert types[0] == "queued" and types[-1] == "finished" and "started" in types
    u = await page.evaluate(f"window.demo.utterances[{uid!r}]")
    assert u["fate"] == "finished" and u["text"] == SENTENCE
    assert isinstance(u["ttfa_ms"], (int, float))
    row = page.locator(f'#utterances tr[data-id="{uid}"]')
    assert await row.locator("td.fate").inner_text() == "spoken"
    assert (await row.locator("td.ttfa").inner_text()).endswith(" ms")
    # the analyser on the received track heard the utterance while it played
    assert u["peak"] > 0.0, "no audio level measured while the utterance played"

    long_uid = await speak_from_page(page, " ".join([SENTENCE] * 12))
    await wait_fate(page, long_uid, "started")
    await page.click("#interrupt")
    await wait_fate(page, long_uid, "interrupted")
    assert await page.evaluate(f"window.demo.utterances[{long_uid!r}].reason") == "interrupt"

    # Pause holds the room at the end of the sentence, Resume goes on with the next one
    held_uid = await speak_from_page(page, " ".join([SENTENCE] * 3))
    await wait_fate(page, held_uid, "started")
    await page.click("#pause")
    await page.wait_for_function("window.demo.paused === true", timeout=WAIT_MS)
    assert await page.is_disabled("#pause") and not await page.is_disabled("#resume")
    await page.click("#resume")
    await page.wait_for_function("window.demo.paused === false", timeout=WAIT_MS)
    await wait_fate(page, held_uid, "finished")
    held = await page.evaluate(f"window.demo.events.filter(e => ['paused', 'resumed'].includes(e.type))")
    assert [(e["type"], e["id"], e["reason"]) for e in held] == [("paused", held_uid, "pause"),
                                                                   ("resumed", held_uid, "pause")]
    if shot := os.environ.get("DEMO_SCREENSHOT"):
        await page.screenshot(path=shot)

    await page.click("#leave")
    await page.wait_for_function("window.demo.state === 'idle'", timeout=WAIT_MS)
    assert running_agent.agent.webrtc.sessions == {}, "Leave sends DELETE to the session's Location"


async def switch_talk_on_and_join(page: Page, base_url: str, room: str) -> None:
    await page.goto(f"{base_url}/demo?room={room}")
    await page.click("label.switch")  # before joining: the first offer already carries the microphone
    assert await page.is_checked("#talk")
    await page.click("#join")
    await page.wait_for_function("window.demo.state === 'joined' && window.demo.bargeIn", timeout=WAIT_MS)


async def test_talk_to_interrupt_sends_the_microphone(running_agent, page):
    await switch_talk_on_and_join(page, running_agent.base_url, "web-talk")
    (session,) = running_agent.agent.webrtc.sessions.values()
    (transceiver,) = session.pc.getTransceivers()
    assert transceiver.currentDirection == "sendrecv"

    speaker = session.room.speaker
    await wait_until(lambda: speaker.barge_in is not None and speaker.barge_in.mode == "interrupt")
    # the microphone flows (whether the agent decodes it is barge-in's business, tested there)
    await page.wait_for_function("window.demo.micPacketsSent().then(n => n > 0)", timeout=WAIT_MS)

    await page.click("label.switch")
    await wait_until(lambda: speaker.barge_in.mode == "off")
    assert await page.evaluate("window.demo.state") == "joined"  # switched off without a new session


async def test_talk_to_interrupt_shows_user_speech(running_agent, open_page, tmp_path):
    # Chromium's fake microphone plays a file: a sentence the agent's own eSpeak NG voice said
    async with httpx.AsyncClient(base_url=running_agent.base_url, timeout=20) as http:
        resp = await http.post("/v1/synthesize", headers={"Authorization": f"Bearer {running_agent.admin_token()}"},
                               json={"text": "Excuse me, could you stop for a moment please?",
                                     "voice": "espeak:en-us", "format": "wav"})
        assert resp.status_code == 200, resp.text
    speech = tmp_path / "speech.wav"
    speech.write_bytes(resp.content)
    page = await open_page(f"--use-file-for-fake-audio-capture={speech}")

    await switch_talk_on_and_join(page, running_agent.base_url, "web-barge")
    identity = await page.evaluate("window.demo.identity")
    chip = page.locator("#user-speech li", has_text=identity)
    await chip.wait_for(timeout=WAIT_MS)
    assert (await chip.inner_text()).endswith("is talking")
    assert await page.evaluate(
        "window.demo.events.some(e => e.type === 'user_speech' && e.state === 'started')")


async def test_listen_page_plays_captions_and_reconnects(running_agent, page):
    room = "web-listen"
    await page.goto(f"{running_agent.base_url}/demo/listen?room={room}")
    await page.wait_for_function("window.listen.state === 'connected'", timeout=WAIT_MS)

    async with httpx.AsyncClient(base_url=running_agent.base_url, timeout=10) as http:
        async def speak(text: str) -> str:
            resp = await http.post(f"/v1/rooms/{room}/speak", json={"text": text, "voice": "espeak:en-us"},
                                   headers={"Authorization": f"Bearer {running_agent.admin_token()}"})
            assert resp.status_code == 202, resp.text
            return resp.json()["id"]

        uid = await speak(SENTENCE)
        await page.wait_for_function(
            f"document.getElementById('caption').dataset.id === {uid!r} && !document.getElementById('caption').hidden",
            timeout=WAIT_MS)
        assert await page.inner_text("#caption") == SENTENCE
        await page.wait_for_function(f"window.listen.events.some(e => e.type === 'finished' && e.id === {uid!r})",
                                     timeout=WAIT_MS)
        assert await page.evaluate("window.listen.level.max") > 0.0, "the listen page heard nothing"

        # the agent drops the session: the page opens a new one by itself and goes on captioning
        (session_id,) = running_agent.agent.webrtc.sessions
        await running_agent.agent.webrtc.end(session_id)
        await page.wait_for_function("window.listen.connects === 2 && window.listen.state === 'connected'",
                                     timeout=WAIT_MS)
        again = "Back on the air."
        uid2 = await speak(again)
        await page.wait_for_function(f"document.getElementById('caption').dataset.id === {uid2!r}",
                                     timeout=WAIT_MS)
        assert await page.inner_text("#caption") == again


async def wait_until(predicate, message: str = "condition not met", timeout: float = 10) -> None:
    async def poll():
        while not predicate():
            await asyncio.sleep(0.05)
    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(message) from None


"""The softphone in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright)
with a fake microphone fed from a fixture WAV calls the real gateway and a Rasa-compatible bot.

The recognizer is set here, not taken from the defaults: pocketsphinx with a phrase grammar,
which hears the English fixture exactly; espeak answers. One call, two turns: the bot gets the
spoken words, then the digits keyed on the page's keypad, and hangs up.

A screenshot of the page at the end of the call is written to test-artifacts/softphone.png (or
$TEST_ARTIFACTS_DIR): an artefact for people, not an assertion. Skipped only when chromium is not
installed; CI installs it (scripts/bootstrap.sh), and under CI a missing chromium fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Locator, Page, expect, sync_playwright
from prometheus_client import REGISTRY

from app.config import Settings
from audio import mulaw, wav
from audio.resample import resample
from tests.support.gateway import RunningGateway, running_gateway
from tests.support.rasa_bot import RasaBot

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR") or ROOT / "test-artifacts")
TOKEN = "browser-test-token-0123456789"
CALLER = "+34600000000"
MIC_RATE = 48000  # what Chromium's fake capture device runs at
# Long enough that the keys are pressed while it plays: they interrupt it (barge-in by DTMF).
ASK_DIGITS = ("Entendido, voy a bloquear su tarjeta de crédito ahora mismo. Para confirmar su "
              "identidad, marque los cuatro últimos dígitos de su tarjeta.")
GOODBYE = "Gracias. Su tarjeta ha sido bloqueada. Adiós."
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
]


CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module", autouse=True)
def chromium_installed() -> None:
    """First of the module's fixtures: no gateway is started for a browser that is not there."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: scripts/bootstrap.sh installs it on CI")
        pytest.skip("chromium is not installed (apt-get install chromium)")


def bot_reply(text: str) -> list[dict[str, Any]]:
    if text.isdigit():
        return [{"recipient_id": "x", "text": GOODBYE},
                {"recipient_id": "x", "custom": {"action": "hangup"}}]
    return [{"recipient_id": "x", "text": ASK_DIGITS},
            {"recipient_id": "x", "custom": {"action": "collect_dtmf", "max_digits": 4}}]


def microphone_wav(directory: Path) -> Path:
    """The line's noise floor, "block my card", then half a minute of noise floor (Chromium loops
    the file; the call is over long before it comes round), as 16-bit PCM: Chromium's fake
    capture reads PCM WAV, not the fixtures' mu-law."""
    floor = wav.read_mulaw_8k(FIXTURES / "silence.wav")  # 2 s
    speech = floor + wav.read_mulaw_8k(FIXTURES / "block_my_card.wav") + floor * 15
    path = directory / "microphone.wav"
    wav.write(path, resample(mulaw.decode(speech), 8000, MIC_RATE), MIC_RATE)
    return path


@pytest.fixture(scope="module")
def gw() -> Iterator[RunningGateway]:
    settings = Settings().replace(
        stt={"engine": "pocketsphinx",
             "pocketsphinx": {"phrases": ["block my card", "talk to a person"], "workers": 1}},
        tts={"engine": "espeak"},
        greeting={"text": "{salutation}."},
        server={"softphone": {"enabled": True, "token": TOKEN}},
    )
    with running_gateway(settings, RasaBot(reply=bot_reply)) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserContext]:
    """Chromium with a fresh profile (Playwright's user_data_dir) and the fake microphone."""
    with tempfile.TemporaryDirectory() as scratch, sync_playwright() as playwright:
        microphone = microphone_wav(Path(scratch))
        context = playwright.chromium.launch_persistent_context(
            Path(scratch) / "profile", executable_path=CHROMIUM, headless=True,
            args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={microphone}"],
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    page = browser.new_page()
    yield page
    page.close()


def entries(page: Page, kind: str) -> Locator:
    """The page's timeline entries of one kind."""
    return page.locator(f"#timeline li[data-kind={kind}]")


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_g711_in_the_page_is_the_gateways(gw: RunningGateway, page: Page) -> None:
    page.goto(f"{gw.url}/softphone?token={TOKEN}")
    encoded, decoded = page.evaluate("""async () => {
        const g711 = await import(new URL("softphone/static/g711.js", location.href));
        const encoded = [];
        for (let s = -32768; s < 32768; s++) encoded.push(g711.encodeSample(s));
        return [encoded, Array.from({length: 256}, (_, b) => g711.decodeSample(b))];
    }""")
    every_sample = b"".join(s.to_bytes(2, "little", signed=True) for s in range(-32768, 32768))
    assert bytes(encoded) == mulaw.encode(every_sample)
    assert b"".join(s.to_bytes(2, "little", signed=True) for s in decoded) == \
        mulaw.decode(bytes(range(256)))


def test_a_call_from_the_browser(gw: RunningGateway, page: Page) -> None:
    bot, before = gw.bot, gw.tasks()
    mark_timeouts = metric("gateway_stream_mark_timeouts_total")
    try:
        page.goto(f"{gw.url}/softphone?token={TOKEN}&from=%2B34600000000")
        page.click("#call")
        expect(page.locator("#status")).to_contain_text("In call · softphone-", timeout=15_000)
        call_sid = page.locator("#status").inner_text().split("· ")[1]

        # The fake microphone says "block my card": recognized, sent to Rasa, answered.
        said = entries(page, "caller_input")
        expect(said.first).to_contain_text("You said", timeout=60_000)
        expect(said.first).to_contain_text("block my card")
        replies = entries(page, "bot_reply")
        expect(replies.first).to_contain_text(ASK_DIGITS)
        expect(replies.first).to_contain_text('"action":"collect_dtmf"')
        request = bot.requests[0]
        assert (request["sender"], request["message"]) == (call_sid, "block my card")
        assert request["metadata"]["input"] == "speech"
        assert request["metadata"]["from"] == CALLER
        expect(entries(page, "turn_latency").first).to_contain_text("total")

        # Keys pressed while the question plays interrupt it, and reach Rasa as digits.
        for key in "1234":
            page.click(f"#keypad button[data-digit='{key}']")
        expect(entries(page, "barge_in").first).to_contain_text("a key interrupted the reply")
        expect(entries(page, "clear").first).to_be_visible()
        expect(said.nth(1)).to_contain_text("You keyed", timeout=15_000)
        expect(said.nth(1)).to_contain_text("1234")
        expect(replies.nth(1)).to_contain_text(GOODBYE)

        # The bot hangs up once its goodbye has played (the page echoed its marks).
        expect(page.locator("#notice")).to_have_text("The bot hung up.", timeout=30_000)
        assert [r["message"] for r in bot.requests] == ["block my card", "1234"]
        assert bot.requests[1]["metadata"]["input"] == "dtmf"
        assert metric("gateway_stream_mark_timeouts_total") == mark_timeouts
        assert gw.wait_settled(before) == []
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=ARTIFACTS / "softphone.png", full_page=True)

"""Fixtures several test modules share."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from app.config import Settings
from app.engines import build_stt
from tests.support.rasa_bot import RasaBot
from tests.support.servers import ServerThread, running

if TYPE_CHECKING:
    from streaming.stt.whisper import WhisperSpeechToText


@pytest.fixture(scope="module")
def bot_server() -> Iterator[tuple[RasaBot, ServerThread]]:
    """A Rasa-compatible bot on loopback, one per test module."""
    bot = RasaBot()
    with running(bot.app()) as server:
        yield bot, server


@pytest.fixture
def bot(bot_server: tuple[RasaBot, ServerThread]) -> RasaBot:
    """The module's bot, back to answering normally with nothing recorded."""
    bot = bot_server[0]
    bot.mode, bot.delay_seconds, bot.reply = "ok", 0.0, RasaBot.reply
    bot.requests.clear()
    bot.received_at.clear()
    return bot


@pytest.fixture(scope="session")
def whisper_engine() -> Iterator[WhisperSpeechToText]:
    """The default recognizer, its model loaded once for the whole test session (as in a gateway
    process, every engine built later in the session shares the loaded model). Tests feed audio
    faster than callers speak: the pool may queue for long before the stream gives up."""
    from streaming.stt.whisper import WhisperSpeechToText

    engine = build_stt(Settings().replace(stt={"whisper": {"max_queue_seconds": 120}}))
    assert isinstance(engine, WhisperSpeechToText)
    yield engine
    asyncio.run(engine.aclose())

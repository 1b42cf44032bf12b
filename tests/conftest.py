"""Fixtures several test modules share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.rasa_bot import RasaBot
from tests.support.servers import ServerThread, running


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
    return bot

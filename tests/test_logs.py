"""JSON log lines with card numbers masked, whoever logged them; startup warnings."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from app.config import Settings
from app.logs import JsonFormatter, configure_logging, mask_card_numbers
from tests.support.servers import running

PAN = "4111111111111111"


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """Real log output of the root logger through the gateway's handler and formatter."""
    root = logging.getLogger()
    level = root.level
    buffer = io.StringIO()
    handler = configure_logging(Settings(), stream=buffer)
    yield buffer
    root.removeHandler(handler)
    root.setLevel(level)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_fields_and_extras(log_output: io.StringIO) -> None:
    logging.getLogger("app.test").info(
        "incoming call",
        extra={
            "event": "incoming_call",
            "call_sid": "CA1",
            "from_number": "+34600111222",
            "to_number": "+34910000000",
            "mode": "stream",
        },
    )
    (entry,) = lines(log_output)
    assert entry["level"] == "INFO" and entry["logger"] == "app.test"
    assert entry["event"] == "incoming_call" and entry["call_sid"] == "CA1"
    assert entry["from_number"] == "+34600111222" and entry["to_number"] == "+34910000000"
    assert entry["message"] == "incoming call" and entry["mode"] == "stream"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", str(entry["timestamp"]))


@pytest.mark.parametrize(
    "pan",
    [
        PAN,
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "378282246310005",
        "6011 0009 9013 9424 123",
    ],
)
def test_card_numbers_are_masked_everywhere(log_output: io.StringIO, pan: str) -> None:
    logger = logging.getLogger("some.library")
    logger.info("caller said: mi tarjeta es %s", pan, extra={"event": "stt_final", "card": pan})
    try:
        raise ValueError(f"cannot block card {pan}")
    except ValueError:
        logger.exception("failed")
    logger.warning("as a number", extra={"card": int(pan.replace(" ", "").replace("-", ""))})
    digits = re.sub(r"\D", "", pan)
    text = log_output.getvalue()
    assert digits not in re.sub(r"[ -]", "", text)
    masked = "*" * (len(digits) - 4) + digits[-4:]
    said, failed, number = lines(log_output)  # still valid JSON after masking
    assert said["message"] == f"caller said: mi tarjeta es {masked}"
    assert said["card"] == masked
    assert f"cannot block card {masked}" in str(failed["exception"])
    assert number["card"] == masked


def test_tabs_and_newlines_between_groups_are_masked(log_output: io.StringIO) -> None:
    """JSON escapes a tab or newline as two characters (backslash, t): values are masked before
    they are encoded."""
    logger = logging.getLogger("some.library")
    logger.info("card %s", "4539\t1488\t0343\t6467",
                extra={"card": "4539\n1488\n0343\n6467", "nested": {"pan": ["4539\r\n1488\r\n"
                                                                        "0343\r\n6467"]}})
    try:
        raise ValueError("cannot block\n4539\n1488\n0343\n6467")
    except ValueError:
        logger.exception("failed")
    said, failed = lines(log_output)
    assert said["message"] == "card ************6467"
    assert said["card"] == "************6467"
    assert said["nested"] == {"pan": ["************6467"]}
    assert "cannot block\n************6467" in str(failed["exception"])
    assert "4539" not in log_output.getvalue()


@pytest.mark.parametrize(
    ("written", "masked"),
    [
        ("4539\u00a01488\u00a00343\u00a06467", "************6467"),  # no-break spaces
        ("card=4539+1488+0343+6467&x=1", "card=************6467&x=1"),  # a query string
        ("card=4539%201488%200343%206467", "card=************6467"),
        ("4.539.148.803.436.467", "************6467"),  # Spanish thousands grouping
        ("45391488034364671227.", "********************."),  # with the expiry: masked whole
        ("at 1732548000.1234567 s", "at 1732548000.1234567 s"),  # a timestamp is no card
        # As recognizers write digits read one by one, or in groups with pauses.
        ("es 4, 5, 3, 9, 1, 4, 8, 8, 0, 3, 4, 3, 6, 4, 6, 7 gracias",
         "es ************6467 gracias"),
        ("4539, 1488, 0343, 6467.", "************6467."),
        ("4539  1488  0343  6467", "************6467"),
        ("4539 - 1488 - 0343 - 6467", "************6467"),
        ("4. 5. 3. 9. 1. 4. 8. 8. 0. 3. 4. 3. 6. 4. 6. 7.", "************6467."),
        ("4539/1488/0343/6467", "************6467"),
        ("4539 ,1488 , 0343\t6467", "************6467"),
        ("378282246310005", "***********0005"),  # 15 digits (Amex)
        ("3782, 8224, 6310, 005", "***********0005"),
        # Spanish "and" before the last group, and other separators recognizers write.
        ("4539, 1488, 0343 y 6467", "************6467"),
        ("4539 1488 0343 y 6467", "************6467"),
        ("4539 1488 0343 e 6467.", "************6467."),
        ("4539_1488_0343_6467", "************6467"),
        ("4539; 1488; 0343; 6467", "************6467"),
        ("4539: 1488: 0343: 6467", "************6467"),
        ("4539\u20131488\u20130343\u20136467", "************6467"),  # en dash
        ("4539 \u2014 1488 \u2014 0343 \u2014 6467", "************6467"),  # em dash
        ("4539 -- 1488 -- 0343 -- 6467", "************6467"),
        ('"4539", "1488", "0343", "6467"', '"************6467"'),
        ("'4539' '1488' '0343' '6467'", "'************6467'"),
        ("'4539\\t1488\\n0343\\r\\n6467'", "'************6467'"),  # a repr's escapes
        ("'tarjeta:\\n4539\\t1488\\t0343\\t6467'", "'tarjeta:\\n************6467'"),
    ],
)
def test_other_ways_of_writing_card_numbers(written: str, masked: str) -> None:
    assert mask_card_numbers(written) == masked


@pytest.mark.parametrize(
    "ordinary",
    [
        "{'total_ms': 1412, 'bot_ms': 380, 'synthesis_ms': 12}",
        '{"endpointing_ms": 400, "bot_ms": 1380, "total_ms": 1900}',
        "CA1234567890123456789abcdef012345",  # a CallSid: CA + 32 hex
        "CA0123456789012345678901234567890a",
        "2026-11-25 15:00:00",
        "2026-11-25T15:00:00.123+00:00",
        "25/11/2026 15:00",
        "+34600111222",  # phone numbers have fewer than 13 digits
        "+34 600 111 222",
        "+34600111222, +34910000000",
        "de +34600111222 a +34910000000",
        "127.0.0.1:54321 - \"GET /health HTTP/1.1\" 200",
        "192.168.100.200:5001",
        "at 1732548000.1234567 s",
        "0.30000000000000004",
        "4539 1488 0343",  # 12 digits
        "1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2",  # 12 digits read one by one
        "4539 -- word -- 1488 0343 6467",  # a word breaks the run
        "4539 ,  1488 ,  0343 ,  6467",  # four separator characters: no longer one number
        "4539 y 1488 y 0343",  # 12 digits
        "1 y 2 y 3 y 4 y 5 y 6 y 7 y 8 y 9 y 0 y 1 y 2",
        "4539 yo 1488 0343 6467",  # a word breaks the run
        "4539 -- word -- 1488 0343 6467",
    ],
)
def test_ordinary_content_is_not_masked(ordinary: str) -> None:
    assert mask_card_numbers(ordinary) == ordinary


def test_a_bad_log_call_does_not_print_its_arguments(
    log_output: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    (handler,) = [h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonFormatter)]
    record = logging.LogRecord("app.test", logging.INFO, __file__, 1, "said %s and %s", (PAN,),
                               None)
    handler.handle(record)  # formatting fails: one argument for two placeholders
    err = capsys.readouterr().err
    assert "Logging error" in err and "said %s and %s" in err
    assert PAN not in err and log_output.getvalue() == ""


def test_ordinary_numbers_are_not_masked(log_output: io.StringIO) -> None:
    sid = "CA1234567890123456789abcdef012345"
    logging.getLogger("app.test").info(
        "latency %s at %s",
        0.30000000000000004,
        "2026-11-25 15:00:00",
        extra={"call_sid": sid, "from_number": "+34600111222", "count": 1234567},
    )
    (entry,) = lines(log_output)
    assert entry["call_sid"] == sid
    assert entry["from_number"] == "+34600111222"
    assert entry["message"] == "latency 0.30000000000000004 at 2026-11-25 15:00:00"
    assert entry["count"] == 1234567


@given(
    digits=st.text(alphabet="0123456789", min_size=13, max_size=19),
    separators=st.lists(
        st.sampled_from(["", " ", "-", "\u00a0", "+", "%20", ", ", "  ", " - ", "/", ". ", " y ",
                         "_", "; ", " -- ", "\u2013", "\", \""]),
        min_size=18, max_size=18,
    ),
    before=st.sampled_from(["", "tarjeta ", "pan=", "(", '"']),
    after=st.sampled_from(["", ".", " gracias", ")", ","]),
)
def test_masking_keeps_only_the_last_four(
    digits: str, separators: list[str], before: str, after: str
) -> None:
    pan = "".join(d + s for d, s in zip(digits[:-1], separators, strict=False)) + digits[-1]
    masked = mask_card_numbers(f"{before}{pan}{after}")
    assert masked == f"{before}{'*' * (len(digits) - 4)}{digits[-4:]}{after}"


def test_uvicorn_logs_go_through_the_formatter(log_output: io.StringIO) -> None:
    async def ok(request: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", ok)])
    with running(app) as server:
        assert httpx.get(f"{server.url}/?card={PAN}").status_code == 200
    entries = lines(log_output)
    access = [e for e in entries if e["logger"] == "uvicorn.access"]
    assert access and "card=************1111" in str(access[0]["message"])
    assert any(e["logger"] == "uvicorn.error" for e in entries)
    assert PAN not in log_output.getvalue()
    assert all("color_message" not in e for e in entries)


def test_tokens_in_urls_are_hidden(log_output: io.StringIO) -> None:
    """The softphone page's address holds its token; uvicorn logs the address it was asked."""
    async def ok(request: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    token = "Xy7-_.~abcdefghijkl"
    app = Starlette(routes=[Route("/softphone", ok)])
    with running(app) as server:
        assert httpx.get(f"{server.url}/softphone?token={token}&from=1").status_code == 200
        assert httpx.get(f"{server.url}/softphone?from=1&token={token}").status_code == 200
    access = [str(e["message"]) for e in lines(log_output) if e["logger"] == "uvicorn.access"]
    assert [m.split('"')[1] for m in access] == ["GET /softphone?token=***&from=1 HTTP/1.1",
                                                 "GET /softphone?from=1&token=*** HTTP/1.1"]
    assert token not in log_output.getvalue()


def test_levels_and_reconfiguration() -> None:
    root = logging.getLogger()
    level = root.level
    try:
        configure_logging(Settings().replace(logging={"level": "WARNING"}), stream=io.StringIO())
        assert root.level == logging.WARNING
        handler = configure_logging(
            Settings().replace(server={"debug": True}), stream=io.StringIO()
        )
        assert root.level == logging.DEBUG
        assert sum(type(h) is type(handler) for h in root.handlers) == 1
    finally:
        root.removeHandler(handler)
        root.setLevel(level)

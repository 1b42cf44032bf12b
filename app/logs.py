"""JSON-lines logging with card numbers masked.

Every record, ours or a library's (uvicorn included), goes through one formatter on the root
logger. Masking runs on every string of the line before it is encoded as JSON (message, fields,
exception text), so a card number (or the softphone's token in a URL) never reaches the log
whatever logged it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import IO, Any

from app.config import Settings
from streaming.redaction import redact_digits as redact_digits  # what a caller's input shows

# Between two digits of a card number: up to three spaces (of any kind), commas, slashes, dashes
# (a double dash, an en or em dash counts as one), underscores, semicolons, colons followed by a
# space, or dots followed by no digit ("4, 5, 3, 9", "4539  1488", "4539 -- 1488", "4. 5. 3.");
# the Spanish "and" ("0343 y 6467", or "e"); any of these with quotes around the groups
# ('"4539", "1488"'); a plus or a URL-encoded space (a query string); or a dot starting a group of
# 3-4 digits ("4.539.148.803.436.467"). A dot between digits otherwise is a decimal point, and a
# colon between digits a clock time ("15:00:00"): no separator. A tab or newline written escaped
# (a repr's "\t") counts as the character, also before the first digit.
_SEPARATOR = (r"""(?:["']?(?:(?:--|[\s,/_;\u2013\u2014-]|\\[nrt]|:(?=\s)|\.(?![0-9])){1,3}"""
              r"""|,?\s{1,2}[ye]\s{1,2})["']?|\+|%20|\.(?=[0-9]{3,4}(?![0-9])))""")
# 13 or more such digits (a card number keyed in with its expiry date is longer than 19). Not part
# of a longer word (a CallSid's hex) and not the fraction of a decimal number (0.30000000000000004).
PAN = re.compile(
    rf"(?:(?<![0-9A-Za-z])|(?<=\\[nrt]))(?<![0-9]\.)[0-9](?:{_SEPARATOR}?[0-9]){{12,}}"
    r"(?![0-9A-Za-z])"
)
_NOT_DIGITS = re.compile(r"%20|[^0-9]")  # what is left of a card number: its digits
# A token in a URL's query, as uvicorn's access log prints the softphone page's `?token=…`.
_URL_TOKEN = re.compile(r"(?<=[?&]token=)[^&#\s\"]+")

FIELDS = (
    "timestamp",
    "level",
    "logger",
    "event",
    "call_sid",
    "from_number",
    "to_number",
    "message",
)
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}
# Integers this large could be card numbers: written as strings so masking keeps the JSON valid.
_BIG = 10**12


def mask_card_numbers(text: str) -> str:
    """Replace each card number by asterisks, keeping its last four digits: ************1234.

    A run longer than a card number (19) is masked whole: its last four are not the card's.
    """

    def _mask(match: re.Match[str]) -> str:
        digits = _NOT_DIGITS.sub("", match.group())
        kept = digits[-4:] if len(digits) <= 19 else ""
        return "*" * (len(digits) - len(kept)) + kept

    return PAN.sub(_mask, text)


def mask_log_line(text: str) -> str:
    """What every log line goes through: card numbers masked, URL tokens hidden."""
    return _URL_TOKEN.sub("***", mask_card_numbers(text))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: the fixed fields, then any `extra=` the caller passed."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "event": None,
            "call_sid": None,
            "from_number": None,
            "to_number": None,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(_masked(entry), ensure_ascii=False, default=str)


def _masked(value: Any) -> Any:
    """`value` ready for JSON, every string in it masked before encoding: JSON would write a tab
    or newline between two groups as a backslash and a letter, which no separator matches."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        return mask_log_line(value)
    if isinstance(value, (int, float)):
        return mask_log_line(str(value)) if abs(value) >= _BIG else value
    if isinstance(value, dict):
        return {mask_log_line(str(k)): _masked(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(v) for v in value]
    return mask_log_line(str(value))


class _GatewayHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler we installed, so reconfiguring replaces it and leaves others alone."""

    def handleError(self, record: logging.LogRecord) -> None:
        """Report a record that could not be written (a bad log call) without its arguments.

        logging's own report prints the arguments, caller data, unmasked to stderr.
        """
        if logging.raiseExceptions:
            sys.stderr.write(mask_log_line(
                f"--- Logging error: {sys.exc_info()[1]!r} in {record.name} "
                f"({record.pathname}:{record.lineno}); message {record.msg!r}\n"
            ))


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """Install the JSON formatter on the root logger (idempotent); uvicorn's loggers use it too."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _GatewayHandler):
            root.removeHandler(handler)
    handler = _GatewayHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel("DEBUG" if settings.server.debug else settings.logging.level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
        uvicorn_logger.setLevel(logging.NOTSET)
    return handler

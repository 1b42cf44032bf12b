"""What a log line may show of what the caller said: the words, never the digits.

A card number can be read out in ways no pattern catches ("cuatro mil quinientos…", or across
two turns, each shorter than a card number), so a caller's input is logged with every digit
replaced by `*`. Used by the session (streaming/session.py) and the Gather webhook
(app/webhooks.py, through app/logs.py): streaming/ never imports app/.
"""

from __future__ import annotations

import re

_DIGIT = re.compile(r"\d")


def redact_digits(text: str) -> str:
    """`text` with each digit (any script's) replaced by `*`: "es el 4539" -> "es el ****"."""
    return _DIGIT.sub("*", text)

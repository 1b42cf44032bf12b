"""DTMF keys collected into one caller input: until the finish key, the digit limit, or a pause.

One timer, restarted by every key; whatever ends the collection hands the digits (possibly none:
the finish key alone) to `deliver`, with the time of the last key (where the turn's wait starts).
A bot's `collect_dtmf` payload changes the rules for the next input only (`expect`); otherwise the
`call.dtmf_*` settings apply.
"""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic

from streaming.actions import CollectDigits
from streaming.tasks import OneShotTimer


class DigitCollector:
    def __init__(self, finish_key: str, timeout_seconds: float,
                 deliver: Callable[[str, float], None]) -> None:
        self._defaults = CollectDigits(None, finish_key, timeout_seconds)
        self._rules = self._defaults
        self._deliver = deliver
        self._digits: list[str] = []
        self._last_key = 0.0  # monotonic time of the latest key
        self._pause = OneShotTimer(self._finish)

    @property
    def pending(self) -> bool:
        """Keys were pressed and not delivered yet: the caller is typing."""
        return bool(self._digits)

    def expect(self, collect: CollectDigits | None) -> None:
        """The rules for the next input: a bot's payload, or the settings' when None."""
        if collect is None:
            self._rules = self._defaults
        else:
            timeout = collect.timeout_seconds or self._defaults.timeout_seconds
            self._rules = CollectDigits(collect.max_digits, collect.finish_on_key, timeout)

    def press(self, digit: str) -> None:
        rules = self._rules
        self._last_key = monotonic()
        if digit == rules.finish_on_key:
            self._finish()
            return
        self._digits.append(digit)
        if rules.max_digits is not None and len(self._digits) >= rules.max_digits:
            self._finish()
        else:
            assert rules.timeout_seconds is not None  # the defaults always have one
            self._pause.start(rules.timeout_seconds)

    def cancel(self) -> None:
        """Stop the pause timer; the keys collected so far stay."""
        self._pause.cancel()

    def _finish(self) -> None:
        self._pause.cancel()
        digits = "".join(self._digits)
        self._digits.clear()
        self._deliver(digits, self._last_key)

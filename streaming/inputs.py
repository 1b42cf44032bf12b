"""The caller's inputs, one at a time for the session's worker: what they said, what they keyed
in, and their silence; and the end of the call's time.

Silence is an input too: the no-input timer queues `Silence` when the caller has had the floor
for `call.no_input_seconds` and did nothing with it. That condition is `silent()`, written once:
the session says whether the caller has the floor; typing keys or an input still waiting for
the worker means they are not silent. `TimeUp` comes once the call has lasted
`call.max_duration_seconds`: in turn with the inputs, so a reply playing is never cut off.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from typing import Literal

from streaming.digits import DigitCollector
from streaming.settings import CallSettings
from streaming.tasks import OneShotTimer


@dataclass(frozen=True, slots=True)
class Utterance:
    text: str
    source: Literal["speech", "dtmf"]
    heard_at: float  # monotonic time the input was complete (final transcript, digits)
    # When the caller's input ended (their speech by the VAD, their last key): the turn's wait
    # starts here. None when the VAD saw no speech end before the transcript.
    ended_at: float | None = None


class Silence:
    """Queued by the no-input timer."""


class TimeUp:
    """Queued when the call reaches call.max_duration_seconds."""


# Transcript and VAD offsets of one speech end differ by frame rounding at most; two speech ends
# are at least stt.endpoint_silence_ms apart.
END_SLACK_MS = 40
# Speech ends kept for transcripts still to come (a recognizer a decode or two behind).
PENDING_ENDS = 8


class CallerInputs:
    """The session's VAD tells when the caller's speech starts and ends, so a final transcript
    knows where the caller stopped: the turn's wait starts there. The caller may speak again
    before the transcript of what they said comes, so the ends wait in order for theirs."""

    def __init__(self, call: CallSettings, has_floor: Callable[[], bool]) -> None:
        self.digits = DigitCollector(call.dtmf_finish_key, call.dtmf_timeout_seconds,
                                     self._on_digits)
        self._no_input_seconds = call.no_input_seconds
        self._has_floor = has_floor
        self._queue: asyncio.Queue[Utterance | Silence | TimeUp] = asyncio.Queue()
        self._no_input = OneShotTimer(self._on_timer)
        self._time_up = OneShotTimer(lambda: self._queue.put_nowait(TimeUp()))
        # (offset ms on the recognizer's timeline, monotonic time) of each speech's last loud
        # frame the VAD ended and no transcript has answered yet, oldest first.
        self._ends: deque[tuple[int, float]] = deque(maxlen=PENDING_ENDS)
        self._onset_ms = 0  # where the VAD's current (or last) speech began
        self._answered = False  # a final came for the current speech before the VAD ended it

    def silent(self) -> bool:
        """The caller has the floor and does nothing with it: the no-input condition."""
        return self._has_floor() and not self.digits.pending and self._queue.empty()

    def speech_started(self, offset_ms: int) -> None:
        self._onset_ms = offset_ms
        self._answered = False
        self.disarm()

    def speech_ended(self, offset_ms: int, at: float) -> None:
        """The VAD ended the caller's speech: its last loud frame was at `offset_ms`, `at`."""
        if not self._answered:
            self._ends.append((offset_ms, at))
        self.arm()

    def speech(self, text: str, end_ms: int | None = None,
               in_speech_end: float | None = None) -> None:
        """A final transcript whose speech ended at `end_ms` (None: the engine does not say).
        `in_speech_end`: where the caller went quiet when the VAD has not ended their speech."""
        self.disarm()
        self._queue.put_nowait(Utterance(text, "speech", monotonic(),
                                         self.claim_end(end_ms, in_speech_end)))

    def claim_end(self, end_ms: int | None, in_speech_end: float | None = None) -> float | None:
        """When the speech a final transcript answers ended, taken off the pending ends with
        those before it (speech no transcript came for). By the transcript's end offset when
        the engine gives one, else the oldest pending end; the speech the VAD has not ended
        yet when the transcript reaches into it (or nothing else is pending)."""
        ends = self._ends
        if in_speech_end is not None and (end_ms is None and not ends
                                          or end_ms is not None and end_ms > self._onset_ms):
            ends.clear()
            self._answered = True
            return in_speech_end
        if end_ms is None:
            return ends.popleft()[1] if ends else None
        claimed = None
        while ends and ends[0][0] <= end_ms + END_SLACK_MS:
            claimed = ends.popleft()[1]
        return claimed

    async def next(self) -> Utterance | Silence | TimeUp:
        return await self._queue.get()

    def time_limit(self, seconds: float) -> None:
        """`TimeUp` comes in `seconds` (at once when none are left)."""
        self._time_up.start(max(0.0, seconds))

    def arm(self) -> None:
        """Start the no-input timer, if the caller is silent and it is not running yet."""
        if not self._no_input.pending and self.silent():
            self._no_input.start(self._no_input_seconds)

    def disarm(self) -> None:
        self._no_input.cancel()

    def close(self) -> None:
        """No timer fires from now on (so no input comes but from `speech` or a key)."""
        self.disarm()
        self.digits.cancel()
        self._time_up.cancel()

    def _on_timer(self) -> None:
        if self.silent():
            self._queue.put_nowait(Silence())

    def _on_digits(self, digits: str, last_key_at: float) -> None:
        if digits:
            self._queue.put_nowait(Utterance(digits, "dtmf", monotonic(), last_key_at))
        else:  # the finish key alone: still the caller's turn
            self.arm()

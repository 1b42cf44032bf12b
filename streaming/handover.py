"""Handing a streamed call back to Twilio: transfer to an agent, hang up, or the Gather path."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

from streaming import metrics
from streaming.ports import CallControl

logger = logging.getLogger("streaming.session")

Ending = Literal["transfer", "hang_up", "redirect_to_gather"]


async def hand_back(control: CallControl, call_sid: str, action: Ending, number: str | None,
                    log: Mapping[str, Any]) -> bool:
    """Ask Twilio to take the call away from the stream; False (logged, counted) when it did
    not: the session then ends the call cleanly, and Twilio follows the fallback TwiML."""
    try:
        if action == "transfer":
            await control.transfer(call_sid, number)
        elif action == "hang_up":
            await control.hang_up(call_sid)
        else:
            await control.redirect_to_gather(call_sid)
    except Exception as exc:  # CallControlError or a client bug: end cleanly either way
        metrics.CALL_CONTROL_ERRORS[action].inc()
        logger.error("call control %s failed: %s", action, exc, extra={
            "event": "call_control_failed", **log, "action": action})
        return False
    metrics.ENDED[action].inc()
    logger.info("call handed back to Twilio: %s", action, extra={"event": f"call_{action}", **log})
    return True

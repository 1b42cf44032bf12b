"""What a bot reply means for the call (`plan_turn`), the same on the stream and Gather paths,
and the one rule for transfer numbers."""

from __future__ import annotations

import pytest

from streaming.actions import CollectDigits, HangUp, Transfer, TurnPlan, is_dialable, plan_turn
from streaming.ports import BotMessage

GOODBYE = "Adiós."


def custom(**payload: object) -> BotMessage:
    return BotMessage(custom=payload)


def test_every_text_is_said_and_nothing_else_happens() -> None:
    plan = plan_turn([BotMessage("Uno."), BotMessage("  "), BotMessage(" Dos. ")], GOODBYE)
    assert plan == TurnPlan(("Uno.", "Dos."))


def test_the_first_ending_wins_after_every_text() -> None:
    plan = plan_turn([BotMessage("Uno."), custom(action="transfer", number="+34911234567"),
                      BotMessage("Dos."), custom(action="hangup")], GOODBYE)
    assert plan == TurnPlan(("Uno.", "Dos."), None, Transfer("+34911234567"))


def test_a_hang_up_with_nothing_to_say_says_goodbye() -> None:
    assert plan_turn([custom(action="hangup")], GOODBYE) == TurnPlan((GOODBYE,), None, HangUp(),
                                                                 goodbye=True)
    assert plan_turn([custom(action="transfer")], GOODBYE) == TurnPlan((), None, Transfer())


def test_digits_are_collected_only_when_the_call_goes_on() -> None:
    collect = custom(action="collect_dtmf", max_digits=4, finish_on_key="*", timeout_seconds=5)
    plan = plan_turn([BotMessage("Marque."), collect, custom(action="collect_dtmf")], GOODBYE)
    assert plan == TurnPlan(("Marque.",), CollectDigits(4, "*", 5.0))
    ending = plan_turn([collect, custom(action="hangup")], GOODBYE)
    assert ending.collect is None and ending.ending == HangUp()


def test_invalid_payloads_are_ignored() -> None:
    plan = plan_turn([custom(action="collect_dtmf", max_digits=0), custom(action="dance"),
                      custom(action="transfer", number="34911234567")], GOODBYE)
    assert plan == TurnPlan((), None, Transfer())  # the default agent, not the bad number


@pytest.mark.parametrize(("number", "dialable"), [
    ("+34911234567", True), ("sip:agentes@pbx.bank.example", True),
    ("34911234567", False), ("+0911234567", False), ("+3491", False), ("sip:", False),
    ("sip:a b", False), ("", False),
])
def test_transfer_targets(number: str, dialable: bool) -> None:
    assert is_dialable(number) is dialable

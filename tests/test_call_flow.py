"""Twilio's reading of TwiML (app/call_flow.py): the documents the gateway answers with, as the
verbs Twilio runs, in order; and what Twilio would refuse to run."""

from __future__ import annotations

import pytest

from app import twiml
from app.call_flow import Dial, Gather, Hangup, Redirect, Say, Stream, TwimlError, describe, read
from app.config import Settings
from app.resume import Carried, Handover

SETTINGS = Settings().replace(twilio={"fallback_phone_number": "+34911234567"})
URLS = twiml.Urls("https://voice.bank.example")


def test_a_new_call_streams_then_asks_the_resume_webhook() -> None:
    parameters = {"callSid": "CA1", "from": "+34600111222", "to": "+34910000000",
                  "resumes": "0", "started": "1767225600", "issued": "1767225600123",
                  "token": "ab12"}
    document = twiml.connect_stream(URLS, parameters, Carried(resumes=0, started=1767225600))
    assert read(document) == [
        Stream("wss://voice.bank.example/webhook/twilio/stream", parameters),
        Redirect("https://voice.bank.example/webhook/twilio/resume?resumes=0&started=1767225600"),
    ]


def test_the_endings_twilio_takes_over() -> None:
    prompts = SETTINGS.prompts
    assert read(twiml.transfer(SETTINGS, URLS)) == [Say(prompts.transfer), Dial("+34911234567")]
    assert read(twiml.hand_over(SETTINGS, URLS, Handover("hang_up"))) == [Hangup()]
    assert read(twiml.gather(SETTINGS, URLS, [prompts.resume])) == [
        Gather("https://voice.bank.example/webhook/twilio/speech?noinput=0", "speech dtmf",
               (prompts.resume,)),
        Redirect("https://voice.bank.example/webhook/twilio/speech?noinput=0"),
    ]
    assert read("<Response><Dial><Sip>sip:agent@pbx.example</Sip></Dial></Response>") == [
        Dial("sip:agent@pbx.example")]


def test_each_verb_has_a_line_for_the_timeline() -> None:
    assert describe(Dial("+34911234567")) == "<Dial> +34911234567"
    assert describe(Hangup()) == "<Hangup>"
    assert describe(Redirect("https://x/next")) == "<Redirect> POST https://x/next"
    assert describe(Gather("https://x/speech", "dtmf", ("Marque.",))) == (
        "<Gather input='dtmf'> Marque. -> https://x/speech")


@pytest.mark.parametrize(("document", "problem"), [
    ("<html>503</html>", "root is <Response>"),
    ("not xml at all", "not TwiML"),
    ("<Response><Play>https://x/a.mp3</Play></Response>", "<Play> is not a verb"),
    ("<Response><Connect><Room>r</Room></Connect></Response>", "without a <Stream url>"),
    ("<Response><Redirect/></Response>", "without a URL"),
])
def test_what_twilio_would_not_run_is_named(document: str, problem: str) -> None:
    with pytest.raises(TwimlError, match=problem):
        read(document)

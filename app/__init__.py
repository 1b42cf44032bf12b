"""The HTTP surface of the voice gateway: config, routes, TwiML, Twilio and Rasa clients."""

__version__ = "0.1.0"

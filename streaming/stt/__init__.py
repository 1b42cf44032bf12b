"""Speech-to-text engines behind `streaming.ports.SpeechToText`: Google, PocketSphinx, null."""

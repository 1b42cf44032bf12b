"""Text-to-speech engines behind `streaming.ports.TextToSpeech`: Google, espeak-ng, null, cache."""

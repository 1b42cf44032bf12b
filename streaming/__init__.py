"""The per-call real-time pipeline: protocol, session, speech engines. Never imports `app`."""

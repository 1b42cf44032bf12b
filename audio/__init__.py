"""Pure audio DSP over bytes and numpy arrays: no I/O, no asyncio, nothing of ours imported."""

"""Runnable examples (``python -m pydl.examples.mnist``); need the ``examples`` extra."""

"""Engines built the way app/engines.py builds them, for tests that construct one directly."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

Engine = TypeVar("Engine")


def configured(engine: Callable[..., Engine], section: type[Any], **changes: Any) -> Engine:
    """`engine` with every field of its settings `section` (app/config.py: the one place for an
    engine's defaults) as a keyword argument, `changes` on top."""
    return engine(**{**dataclasses.asdict(section()), **changes})

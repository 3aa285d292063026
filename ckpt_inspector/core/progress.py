"""What a long operation reports between steps.

Long work in the core is a generator that yields :class:`Progress` (each yield is
also a point where the caller may stop) and returns its result.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Progress:
    stage: str
    done: int = 0
    total: int = 0
    detail: str = ""

"""What the verdict is made of: a :class:`Finding` (severity, code, message, where) and the
three verdict levels. Readers report findings while they read; :mod:`scan` adds its own
and decides the verdict."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

SAFE, NEEDS_TRUST, DANGEROUS = "safe", "needs-trust", "dangerous"


@dataclass
class Finding:
    severity: str  # dangerous | needs-trust | info
    code: str
    message: str
    member: str | None = None
    offset: int | None = None
    name: str | None = None
    file: str | None = None  # which file, in a checkpoint made of several files

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

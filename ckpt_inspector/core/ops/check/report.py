"""What a check finds, as the command prints it (``--json``) and the window reads it back:
the lists ``model.load_state_dict(sd, strict=True)`` would report, the dtype casts it would
make, the fix, and every key's status for the tree. Plain data, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# -- what happens to a key ------------------------------------------------------------------
OK = "ok"  # loaded as it is
DTYPE = "dtype"  # loaded, cast to the model's dtype (torch copies; not an error)
MISSING = "missing"  # the model has it, the checkpoint does not: an error
UNEXPECTED = "unexpected"  # the checkpoint has it, the model has no place for it: an error
MISMATCHED = "mismatched"  # both have it, in other shapes: an error
ERROR = "error"  # torch would fail to copy it for another reason (not a tensor, ...)
FILLED = "filled"  # the checkpoint lacks it and torch fills it in (num_batches_tracked)
IGNORED = "ignored"  # in the checkpoint, neither loaded nor reported (torch skips it)
STATUSES = (OK, DTYPE, MISSING, UNEXPECTED, MISMATCHED, ERROR, FILLED, IGNORED)
FAILING = frozenset({MISSING, UNEXPECTED, MISMATCHED, ERROR})
# the colour a group of keys takes is its worst key's: first in this order
SEVERITY = (MISMATCHED, ERROR, MISSING, UNEXPECTED, DTYPE, FILLED, IGNORED, OK)
STATUS_HELP = {
    OK: "loads as it is",
    DTYPE: "loads, cast to the model's dtype (load_state_dict copies with a cast)",
    MISSING: "the model has it, the checkpoint does not (Missing key)",
    UNEXPECTED: "in the checkpoint, the model has no place for it (Unexpected key)",
    MISMATCHED: "in both, with different shapes (size mismatch)",
    ERROR: "torch cannot copy it into the model (not a tensor, …)",
    FILLED: "not in the checkpoint; torch fills it in (num_batches_tracked of a state_dict "
            "saved without _metadata versions)",
    IGNORED: "in the checkpoint; torch neither loads nor reports it",
}


@dataclass(frozen=True)
class Spec:
    """A tensor as one side has it: shape and dtype (torch's name without ``torch.``);
    ``shape`` None for a value that is not a tensor (``dtype`` then names its type)."""

    shape: tuple[int, ...] | None
    dtype: str

    def text(self) -> str:
        if self.shape is None:
            return f"({self.dtype})"
        return f"{self.dtype}[{', '.join(str(s) for s in self.shape)}]"

    def to_json(self) -> dict[str, Any]:
        return {"shape": None if self.shape is None else list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Spec | None:
        if d is None:
            return None
        shape = d.get("shape")
        return cls(None if shape is None else tuple(int(s) for s in shape), str(d["dtype"]))


@dataclass
class KeyRow:
    """One key of either side with its status (the window's tree)."""

    key: str
    status: str
    checkpoint: Spec | None
    model: Spec | None

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "status": self.status,
                "checkpoint": self.checkpoint.to_json() if self.checkpoint else None,
                "model": self.model.to_json() if self.model else None}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KeyRow:
        return cls(str(d["key"]), str(d["status"]), Spec.from_json(d.get("checkpoint")),
                   Spec.from_json(d.get("model")))


@dataclass
class Fix:
    """What to do to the state_dict (and the model) so that it loads: applied in this
    order, strip a prefix, add one, rename, build the model with ``num_classes``; then
    load, with ``strict=False`` where only keys the model has no place for are left.
    ``compatible``: whether strict loading then succeeds (checked, not guessed)."""

    strip_prefix: str = ""
    add_prefix: str = ""
    renames: list[tuple[str, str]] = field(default_factory=list)  # (old segments, new)
    num_classes: int | None = None
    strict: bool = True
    compatible: bool = False
    code: str = ""
    summary: str = ""
    remaining: dict[str, list[str]] = field(default_factory=dict)  # missing/unexpected/...
    notes: list[str] = field(default_factory=list)

    @property
    def changes_keys(self) -> bool:
        return bool(self.strip_prefix or self.add_prefix or self.renames)

    def to_json(self) -> dict[str, Any]:
        return {"strip_prefix": self.strip_prefix, "add_prefix": self.add_prefix,
                "renames": [list(r) for r in self.renames], "num_classes": self.num_classes,
                "strict": self.strict, "compatible": self.compatible, "summary": self.summary,
                "code": self.code, "remaining": self.remaining, "notes": self.notes}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Fix | None:
        if d is None:
            return None
        return cls(str(d.get("strip_prefix", "")), str(d.get("add_prefix", "")),
                   [(str(a), str(b)) for a, b in d.get("renames", [])], d.get("num_classes"),
                   bool(d.get("strict", True)), bool(d.get("compatible")),
                   str(d.get("code", "")), str(d.get("summary", "")),
                   {k: list(v) for k, v in (d.get("remaining") or {}).items()},
                   list(d.get("notes") or []))


@dataclass
class Mismatch:
    key: str
    checkpoint: Spec
    model: Spec


@dataclass
class CheckReport:
    """What ``model.load_state_dict(sd, strict=True)`` would say, in torch's order."""

    path: str
    key: str  # the part of the file taken as the state_dict ("" the whole file)
    target: dict[str, Any]  # {"kind": arch|builder|checkpoint, "name", "tensors", ...}
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[Mismatch] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # torch's other error messages
    dtypes: list[Mismatch] = field(default_factory=list)  # cast on load: information
    notes: list[str] = field(default_factory=list)
    fix: Fix | None = None
    rows: list[KeyRow] = field(default_factory=list)
    exact: bool = True  # torch's own load_state_dict ran (on the meta device)

    @property
    def compatible(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.errors)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for r in self.rows:
            out[r.status] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        def pair(m: Mismatch, what: str) -> dict[str, Any]:
            a, b = m.checkpoint, m.model
            if what == "shape":
                return {"key": m.key, "checkpoint": list(a.shape or ()),
                        "model": list(b.shape or ())}
            return {"key": m.key, "checkpoint": a.dtype, "model": b.dtype}

        return {"path": self.path, "key": self.key, "target": self.target,
                "compatible": self.compatible, "exact": self.exact,
                "missing": self.missing, "unexpected": self.unexpected,
                "mismatched": [pair(m, "shape") for m in self.mismatched],
                "errors": self.errors,
                "dtypes": [pair(m, "dtype") for m in self.dtypes],
                "notes": self.notes,
                "fix": self.fix.to_json() if self.fix else None,
                "keys": [r.to_json() for r in self.rows]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CheckReport:
        rows = [KeyRow.from_json(r) for r in d.get("keys", [])]
        specs = {r.key: r for r in rows}

        def pair(m: dict[str, Any], what: str) -> Mismatch:
            row = specs.get(m["key"])
            if row is not None and row.checkpoint and row.model:
                return Mismatch(m["key"], row.checkpoint, row.model)
            if what == "shape":
                return Mismatch(m["key"], Spec(tuple(m["checkpoint"]), "?"),
                                Spec(tuple(m["model"]), "?"))
            return Mismatch(m["key"], Spec((), m["checkpoint"]), Spec((), m["model"]))

        return cls(str(d["path"]), str(d.get("key", "")), dict(d.get("target") or {}),
                   list(d.get("missing", [])), list(d.get("unexpected", [])),
                   [pair(m, "shape") for m in d.get("mismatched", [])],
                   list(d.get("errors", [])), [pair(m, "dtype") for m in d.get("dtypes", [])],
                   list(d.get("notes", [])), Fix.from_json(d.get("fix")), rows,
                   bool(d.get("exact", True)))

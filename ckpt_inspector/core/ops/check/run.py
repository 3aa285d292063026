"""A check from end to end: the state_dict a checkpoint holds, loaded into a target, its
report in torch's words and order, each key's status, and the fix."""

from __future__ import annotations

from ckpt_inspector.core.ops.check.fixes import find_fix
from ckpt_inspector.core.ops.check.report import (
    DTYPE,
    ERROR,
    FILLED,
    IGNORED,
    MISMATCHED,
    MISSING,
    OK,
    UNEXPECTED,
    CheckReport,
    KeyRow,
    Mismatch,
)
from ckpt_inspector.core.ops.check.state import Outcome, StateDict, Target, read_part
from ckpt_inspector.core.tree import Checkpoint

LOW_MATCH = 0.5  # below this share of the model's keys matched, suggest `arch`


def check(ckpt: Checkpoint, target: Target, key: str | None = None) -> CheckReport:
    """What ``model.load_state_dict(sd, strict=True)`` reports, ``sd`` the part ``key`` of
    ``ckpt`` (None: the best guess) and ``model`` the target; with the fix."""
    sd = read_part(ckpt, key)
    outcome = target.load(sd.items, sd.versions)
    return report(ckpt.path, sd, target, outcome)


def report(path: str, sd: StateDict, target: Target, outcome: Outcome) -> CheckReport:
    specs, expected = sd.specs(), target.expected
    out = CheckReport(path, sd.key, target.describe(), list(outcome.missing),
                      list(outcome.unexpected),
                      [Mismatch(k, specs[k], expected[k]) for k in outcome.mismatched
                       if k in specs and k in expected],
                      [m for _k, m in outcome.errors], exact=target.exact)
    mismatched = set(outcome.mismatched) | {k for k, _m in outcome.errors if k}
    out.dtypes = [Mismatch(k, s, expected[k]) for k, s in specs.items()
                  if k in expected and k not in mismatched and s.shape is not None
                  and s.dtype != expected[k].dtype]
    out.rows = _rows(sd, target, outcome)
    out.fix = find_fix(sd, target, outcome)
    out.notes = _notes(out, target)
    return out


def _rows(sd: StateDict, target: Target, outcome: Outcome) -> list[KeyRow]:
    """Every key of the model in its order (its status), then the checkpoint's other keys
    in theirs."""
    specs, expected = sd.specs(), target.expected
    missing, unexpected = set(outcome.missing), set(outcome.unexpected)
    mismatched = set(outcome.mismatched)
    errors = {k for k, _m in outcome.errors if k}
    rows = []
    for key, want in expected.items():
        got = specs.get(key)
        if key in mismatched:
            status = MISMATCHED
        elif key in errors:
            status = ERROR
        elif key in missing:
            status = MISSING
        elif got is None:
            status = FILLED
        elif got.dtype != want.dtype:
            status = DTYPE
        else:
            status = OK
        rows.append(KeyRow(key, status, got, want))
    for key, got in specs.items():
        if key not in expected:
            rows.append(KeyRow(key, UNEXPECTED if key in unexpected else IGNORED, got, None))
    return rows


def _notes(out: CheckReport, target: Target) -> list[str]:
    notes = []
    filled = [r.key for r in out.rows if r.status == FILLED]
    if filled:
        n = len(filled)
        notes.append(f"{n:,} key{'s' if n != 1 else ''} the checkpoint lacks "
                     f"{'are' if n != 1 else 'is'} filled in, not reported missing (e.g. "
                     f"{filled[0]}): BatchNorm does so when the state_dict's _metadata has "
                     "no version for its module")
    ignored = [r.key for r in out.rows if r.status == IGNORED]
    if ignored:
        notes.append(f"{len(ignored):,} key{'s' if len(ignored) != 1 else ''} of the "
                     f"checkpoint {'are' if len(ignored) != 1 else 'is'} neither loaded nor "
                     f"reported by torch (e.g. {ignored[0]})")
    if out.dtypes:
        notes.append(f"{len(out.dtypes):,} tensor{'s' if len(out.dtypes) != 1 else ''} "
                     "differ in dtype only: load_state_dict casts them to the model's "
                     "(no error)")
    if not target.exact:
        notes.append("the model's modules are inferred from the other checkpoint's keys "
                     "(the real model may order unexpected keys or load some its own way)")
    matched = sum(1 for r in out.rows if r.status in (OK, DTYPE))
    if target.kind != "checkpoint" and target.expected and \
            matched < LOW_MATCH * len(target.expected) and not (
            out.fix and out.fix.compatible):
        notes.append(f"only {matched:,} of the model's {len(target.expected):,} tensors are "
                     "in the checkpoint as they are: is it the right model? "
                     "(`ckpt-inspector arch` finds the torchvision one that fits)")
    return notes

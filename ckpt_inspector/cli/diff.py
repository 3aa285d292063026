"""``diff``: compare two checkpoints: keys, shapes, dtypes and values."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ckpt_inspector.cli import _common
from ckpt_inspector.cli._errors import (
    EXIT_NOT_SAFE,
    EXIT_OK,
    EXIT_UNREADABLE,
    fail,
    unreadable,
    usage,
)
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.progress import run as run_job
from ckpt_inspector.core.summary import counted, human_bytes, human_count, totals
from ckpt_inspector.core.tree import Checkpoint

NAMES = ("diff",)


def add_parser(sub: Any) -> None:
    df = sub.add_parser(
        "diff", help="compare two checkpoints: keys, shapes, dtypes and values",
        description="Exit 0 when identical, 1 when different, 3 when a file (or a tensor's "
                    "data) cannot be read. "
                    "Keys are matched exactly or, when it matches more of them, after "
                    "stripping a prefix found automatically (module., model., ...).")
    df.add_argument("a", metavar="A")
    df.add_argument("b", metavar="B")
    df.add_argument("--strip-prefix", action="append", default=[], metavar="P",
                    help="strip P (ending at a key segment: 'module' means 'module.') from "
                         "the keys of both files where they start with it; given rules "
                         "replace the automatic search")
    df.add_argument("--strip-prefix-a", action="append", default=[], metavar="P",
                    help="strip P from A's keys only")
    df.add_argument("--strip-prefix-b", action="append", default=[], metavar="P",
                    help="strip P from B's keys only")
    df.add_argument("--exact", action="store_true",
                    help="match keys exactly (no prefix found automatically)")
    df.add_argument("--key-a", metavar="KEY", help="compare only this part of A "
                    "(e.g. model_state_dict)")
    df.add_argument("--key-b", metavar="KEY", help="compare only this part of B")
    df.add_argument("--all", action="store_true", help="list every key, identical ones too")
    df.add_argument("--json", action="store_true", help="one JSON object on stdout")
    df.add_argument("--progress", action="store_true",
                    help="JSON lines of progress on stdout, then the result")


def run(args: argparse.Namespace) -> int:
    return cmd_diff(args)


def cmd_diff(args: argparse.Namespace) -> int:
    from ckpt_inspector.core.ops import diff as d

    rules = [d.PrefixRule(p, side) for side, given in
             (("both", args.strip_prefix), ("a", args.strip_prefix_a), ("b", args.strip_prefix_b))
             for p in given]
    opened = []
    for path in (args.a, args.b):
        try:
            opened.append(_common.open_file(path))
        except CheckpointError as err:
            return unreadable(path, err)
    try:
        result = run_job(d.diff(*opened, rules=rules, key_a=args.key_a, key_b=args.key_b,
                                auto=not args.exact), _common.progress_printer(args.progress))
    except KeyError as err:
        side = "A" if args.key_a and err.args[0] == args.key_a else "B"
        return usage(f"{side} has no key {err.args[0]!r}")
    unreadable_count = sum(1 for e in result.entries if e.status == d.UNREADABLE)
    code = (EXIT_OK if result.identical else EXIT_UNREADABLE if unreadable_count
            else EXIT_NOT_SAFE)
    failure = (f"{counted(unreadable_count, 'tensor')} could not be read, so the files cannot "
               "be called identical or different there")
    try:
        if args.json or args.progress:
            doc = result.to_json()
            if unreadable_count:  # it exits 3: the answer says so too
                doc.update(error=failure, exit_code=code)
            print(json.dumps(doc))
        else:
            print_diff(result, opened, args.all)
        sys.stdout.flush()
    except BrokenPipeError:  # piped into head: the answer is still the exit status
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if unreadable_count:
        fail(failure, code)
    return code


def print_diff(result: Any, opened: list[Checkpoint], everything: bool) -> None:
    from ckpt_inspector.core.ops import diff as d

    for name, ckpt in zip("AB", opened, strict=True):
        t = totals(ckpt)
        print(f"{name}  {ckpt.path}  ({ckpt.format}, {counted(t['tensors'], 'tensor')}, "
              f"{human_count(t['numel'])} elements, {human_bytes(t['nbytes'])})")
    if result.rules:
        how = "found automatically; --exact turns it off" if result.auto_rule else "as asked"
        print("keys matched with " + "; ".join(r.describe() for r in result.rules)
              + f" ({how})")
    for note in result.notes():
        print(f"note: {note}")
    counts = result.counts()
    summary = ", ".join(f"{n:,} {s}" for s, n in counts.items() if n)
    elements = result.change_summary()  # the window's words too
    elements = f"; {elements}" if elements else ""
    if result.identical:
        print(f"\nIDENTICAL: {summary or 'both empty'}{elements}")
        if not everything:
            return
    else:
        print(f"\nDIFFERENT: {summary}{elements}")
    largest = result.largest()
    listed = sum(1 for e in result.entries if e.status in (d.CHANGED, d.DTYPE))
    if largest and listed > len(largest):  # else the lists below say it all, in this order
        print("\nlargest changes (relative L2 difference, ||A−B|| / max(||A||, ||B||)):")
        width = min(max(len(e.key) for e in largest), 60)
        for e in largest:
            print(f"  {e.key:{width}s}  {d.describe_numbers(e.numbers)}")
    width = min(max((len(e.key) for e in result.entries
                     if everything or e.status != d.IDENTICAL), default=3), 60)
    for status in d.STATUSES:
        entries = [e for e in result.entries if e.status == status]
        if not entries or (status == d.IDENTICAL and not everything):
            continue
        if status in (d.CHANGED, d.DTYPE):
            entries.sort(key=lambda e: (-e.score(), e.key))
        print(f"\n{status} ({len(entries):,}):")
        shown = entries if everything else entries[:50]
        for e in shown:
            print(f"  {e.key or '(the part chosen)':{width}s}  {_diff_line(e)}")
        if len(shown) < len(entries):
            print(f"  … and {len(entries) - len(shown):,} more (--all lists them)")


def _diff_line(e: Any) -> str:
    from ckpt_inspector.core.ops import diff as d

    a = e.a.describe() if e.a else ""
    b = e.b.describe() if e.b else ""
    if e.status == d.ONLY_A:
        return a
    if e.status == d.ONLY_B:
        return b
    if e.status == d.UNREADABLE:
        return f"{a}: {e.error}"
    if e.status == d.IDENTICAL:
        return a
    if e.numbers is not None:
        text = d.describe_numbers(e.numbers)
        return f"{a} → {b}: {text}" if a != b else f"{a}: {text}"
    return f"{a} → {b}"


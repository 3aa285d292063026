"""``check``: will ``model.load_state_dict(sd, strict=True)`` accept this checkpoint?"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ckpt_inspector.cli._errors import EXIT_NOT_SAFE, EXIT_OK, fail, unreadable, usage
from ckpt_inspector.core.errors import CheckpointError

NAMES = ("check",)
SHOWN = 20  # keys listed per section in the text report


def add_parser(sub: Any) -> None:
    ck = sub.add_parser(
        "check", help="will load_state_dict accept it? missing, unexpected and mismatched "
                      "keys against a model, and the fix",
        description="Compare a checkpoint's state_dict with a model's: a torchvision "
                    "architecture or your builder, built on the meta device (nothing "
                    "allocated or downloaded; torch's own load_state_dict decides), or "
                    "another checkpoint. Reports what model.load_state_dict(sd, "
                    "strict=True) would, in its order, and a fix (a prefix rule, renames, "
                    "a head size). Exit 0 when strict loading would succeed, 1 when not, 2 "
                    "for a bad model or --key, 3 for an unreadable file. Nothing from the "
                    "checkpoint runs.")
    ck.add_argument("path", nargs="?", help="the checkpoint (file, folder or URL)")
    model = ck.add_mutually_exclusive_group()
    model.add_argument("--arch", metavar="NAME", help="a torchvision architecture "
                       "(resnet18, vit_b_16, …)")
    model.add_argument("--builder", metavar="MODULE:FUNCTION",
                       help="your function that returns the model, called with no "
                            "arguments: pkg.mod:fn (imported from the current folder or "
                            "PYTHONPATH) or path/to/file.py:fn")
    model.add_argument("--against", metavar="OTHER",
                       help="another checkpoint whose state_dict stands for the model")
    ck.add_argument("--key", metavar="PART", help="the part of the file holding the "
                    "state_dict (e.g. state_dict, model; default: best guess)")
    ck.add_argument("--against-key", metavar="PART", help="the part of OTHER to use")
    ck.add_argument("--list-arch", action="store_true",
                    help="list the torchvision architectures --arch takes, and exit")
    ck.add_argument("--json", action="store_true", help="one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    from ckpt_inspector.core.ops.check.request import CheckRequest, run_check
    from ckpt_inspector.core.ops.check.state import CheckUsageError

    if args.list_arch:
        return _list_arch(args.json)
    if not args.path:
        return usage("check: give the checkpoint's PATH")
    try:
        request = CheckRequest.from_args(args)
        report = run_check(request)
    except CheckUsageError as err:
        return usage(f"check: {err}")
    except CheckpointError as err:  # unreadable: the checkpoint, or the other one
        return unreadable(getattr(err, "check_path", args.path), err)
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        _print(report)
    return EXIT_OK if report.compatible else EXIT_NOT_SAFE


def _list_arch(as_json: bool) -> int:
    from ckpt_inspector.core.ops.check.models import arch_names

    try:
        names = arch_names()
    except ImportError as err:
        return fail(f"torchvision is not installed ({err})", EXIT_NOT_SAFE)
    print(json.dumps({"architectures": names}) if as_json else "\n".join(names))
    return EXIT_OK


def _section(title: str, lines: list[str]) -> None:
    if not lines:
        return
    print(f"{title} ({len(lines):,}):")
    for line in lines[:SHOWN]:
        print(f"  {line}")
    if len(lines) > SHOWN:
        print(f"  … and {len(lines) - SHOWN:,} more (--json lists them all)")


def _print(report: Any) -> None:
    from ckpt_inspector.core.ops.check.report import FILLED

    t = report.target
    rows = {r.key: r for r in report.rows}
    in_file = sum(1 for r in report.rows if r.checkpoint is not None)
    part = f" [{report.key}]" if report.key else ""
    print(f"checkpoint  {report.path}{part} ({in_file:,} entries)")
    what = {"arch": "torchvision", "builder": "builder", "checkpoint": "checkpoint"}[t["kind"]]
    extra = f", {t['class']}" if t.get("class") else ""
    print(f"model       {t['name']} ({what}{extra}, {t['tensors']:,} tensors)")
    print()
    if report.compatible:
        loaded = sum(1 for r in report.rows if r.model is not None and r.status != FILLED)
        print(f"COMPATIBLE: model.load_state_dict(sd, strict=True) loads all {loaded:,} "
              "tensors")
    else:
        print("NOT COMPATIBLE: model.load_state_dict(sd, strict=True) would fail")

    def spec(key: str, side: str) -> str:
        row = rows.get(key)
        s = getattr(row, side, None) if row is not None else None
        return s.text() if s is not None else ""

    _section("missing", [f"{k}  {spec(k, 'model')}" for k in report.missing])
    _section("unexpected", [f"{k}  {spec(k, 'checkpoint')}" for k in report.unexpected])
    _section("size mismatch", [f"{m.key}  checkpoint {m.checkpoint.text()}, model "
                               f"{m.model.text()}" for m in report.mismatched])
    _section("other errors", report.errors)
    _section("dtype (cast on load, not an error)",
             [f"{m.key}  {m.checkpoint.dtype} → {m.model.dtype}" for m in report.dtypes])
    for note in report.notes:
        print(f"note: {note}")
    fix = report.fix
    if fix is not None:
        print()
        print(f"fix: {fix.summary}")
        for line in fix.code.splitlines():
            print(f"    {line}")
        for note in fix.notes:
            print(f"note: {note}")

"""``stats``: statistics of tensors (and histograms), read in chunks."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ckpt_inspector.cli import _common
from ckpt_inspector.cli._errors import EXIT_OK, EXIT_UNREADABLE, fail, unreadable, usage
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.progress import run as run_job

NAMES = ("stats",)


def add_parser(sub: Any) -> None:
    st = sub.add_parser("stats", help="statistics of tensors (and histograms), read in chunks")
    st.add_argument("path")
    st.add_argument("keys", nargs="*", metavar="KEY", help="tensors to describe (default: all)")
    st.add_argument("--device", default="cpu",
                    help="where the arithmetic runs: cpu (numpy) or a torch device (cuda:0)")
    st.add_argument("--bins", type=int, default=0, metavar="N",
                    help="also a histogram of N bins (exact up to 64M elements, else sampled)")
    st.add_argument("--json", action="store_true", help="one JSON object on stdout")
    st.add_argument("--progress", action="store_true",
                    help="JSON lines of progress on stdout, then the result")


def run(args: argparse.Namespace) -> int:
    return cmd_stats(args)


def cmd_stats(args: argparse.Namespace) -> int:
    from ckpt_inspector.core.ops.stats import compute, format_number, histogram
    from ckpt_inspector.core.tree import key_of

    if args.bins < 0 or args.bins > 10_000:
        return usage("--bins must be between 1 and 10000")
    if args.device != "cpu":
        try:
            from ckpt_inspector.core.devices import unavailable

            problem = unavailable(args.device)
        except ImportError as err:  # no torch
            problem = f"device {args.device} needs torch: {err}"
        if problem:
            return usage(problem)
    try:
        ckpt = _common.open_file(args.path)
    except CheckpointError as err:
        return unreadable(args.path, err)
    found = {key_of(p): node.tensor for p, node in ckpt.tensors() if node.tensor is not None}
    missing = [k for k in args.keys if k not in found]
    if missing:
        return usage(f"{args.path}: no tensor {missing[0]!r}")
    keys = args.keys or list(found)
    on_progress = _common.progress_printer(args.progress)
    report: dict[str, Any] = {}
    for key in keys:
        info = found[key]
        try:
            st = run_job(compute(info, args.device), on_progress)
            entry: dict[str, Any] = {"shape": list(info.shape), **st.to_json()}
            if args.bins and st.min is not None:
                h = run_job(histogram(info, st, args.bins), on_progress)
                entry["histogram"] = {"edges": h.edges.tolist(), "counts": h.counts.tolist(),
                                      "sampled": h.sampled}
        except CheckpointError as err:
            entry = {"shape": list(info.shape), "dtype": info.dtype, "error": str(err)}
        report[key] = entry
    failed = [k for k, e in report.items() if "error" in e]
    if args.json or args.progress:
        doc: dict[str, Any] = {"path": args.path, "device": args.device, "tensors": report}
        if failed and args.keys:  # it exits 3: the answer says so too
            doc.update(error=_unread(args, failed), exit_code=EXIT_UNREADABLE)
        print(json.dumps(doc))
        return _failed(args, failed)
    width = min(max((len(k) for k in keys), default=3), 48)
    print(f"{'key':{width}s}  {'dtype':9s} {'min':>11s} {'max':>11s} {'mean':>11s} "
          f"{'std':>11s} {'zeros':>7s}  nan/inf")
    for key, e in report.items():
        if "error" in e:
            print(f"{key:{width}s}  {e['dtype']:9s} {e['error']}")
            continue
        nums = " ".join(f"{format_number(e[f]):>11s}"
                        for f in ("min", "max", "mean", "std"))
        bad = e["nan"] + e["posinf"] + e["neginf"]
        print(f"{key:{width}s}  {e['dtype']:9s} {nums} {e['sparsity']:7.1%}  "
              f"{bad:,}" + (f"  ({e['note']})" if e["note"] else ""))
    return _failed(args, failed)


def _failed(args: argparse.Namespace, failed: list[str]) -> int:
    """Exit 3 when a tensor named on the command line cannot be read; a line on stderr
    saying how many could not be read in any case."""
    if not failed:
        return EXIT_OK
    if args.keys:
        return fail(_unread(args, failed), EXIT_UNREADABLE, args.path)
    import sys

    print(f"ckpt-inspector: {_unread(args, failed)}", file=sys.stderr)
    return EXIT_OK


def _unread(args: argparse.Namespace, failed: list[str]) -> str:
    what = f"{len(failed):,} tensor{'s' if len(failed) != 1 else ''} could not be read"
    return f"{args.path}: {what}" + (f" ({failed[0]})" if args.keys else "")

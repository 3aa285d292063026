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
    st = sub.add_parser(
        "stats", help="statistics of tensors (and histograms), read in chunks",
        description="min, max, mean, std, mean |x|, L2 norm, zeros, NaN and inf of tensors, "
                    "summed in float64 a chunk at a time. std is the population standard "
                    "deviation (divided by n, numpy's std(); torch's t.std() divides by n-1, "
                    "t.std(correction=0) matches).")
    st.add_argument("path", help="a checkpoint file, folder or URL")
    st.add_argument("keys", nargs="*", metavar="KEY", help="tensors to describe (default: all)")
    st.add_argument("--device", default="cpu",
                    help="where the arithmetic runs: cpu (numpy) or a torch device (cuda:0)")
    st.add_argument("--bins", type=int, default=0, metavar="N",
                    help="also a histogram of N bins (exact up to 64M elements, else sampled)")
    st.add_argument("--lora-update", action="store_true",
                    help="statistics of LoRA pairs' effective update scale·B@A instead: each "
                         "KEY names an adapted module or one of its tensors (default: every "
                         "pair)")
    st.add_argument("--json", action="store_true", help="one JSON object on stdout")
    st.add_argument("--progress", action="store_true",
                    help="JSON lines of progress on stdout, then the result")


def run(args: argparse.Namespace) -> int:
    return cmd_stats(args)


def cmd_stats(args: argparse.Namespace) -> int:
    from ckpt_inspector.core.ops.stats import compute, format_number, histogram
    from ckpt_inspector.core.tree import key_of

    if args.bins < 0 or args.bins > 10_000:
        return usage("--bins must be between 1 and 10000 (0, the default: no histogram)")
    problem = _device_problem(args.device)
    if problem:
        return usage(problem)
    try:
        ckpt = _common.open_file(args.path)
    except CheckpointError as err:
        return unreadable(args.path, err)
    if args.lora_update:
        targets = _lora_targets(args, ckpt)
        if isinstance(targets, int):
            return targets
    else:
        found = {key_of(p): node.tensor for p, node in ckpt.tensors()
                 if node.tensor is not None}
        missing = [k for k in args.keys if k not in found]
        if missing:
            return usage(f"{args.path}: no tensor {missing[0]!r}")
        targets = {k: (found[k], {}) for k in args.keys or found}
    keys = list(targets)
    on_progress = _common.progress_printer(args.progress)
    report: dict[str, Any] = {}
    for key, (info, about) in targets.items():
        try:
            st = run_job(compute(info, args.device), on_progress)
            entry: dict[str, Any] = {"shape": list(info.shape), **about, **st.to_json()}
            if args.bins and st.min is not None:
                h = run_job(histogram(info, st, args.bins), on_progress)
                entry["histogram"] = {"edges": h.edges.tolist(), "counts": h.counts.tolist(),
                                      "sampled": h.sampled}
        except (CheckpointError, OSError, ValueError) as err:  # a file, or a pair's shapes
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
    if args.lora_update:
        print("effective update scale·B@A of each LoRA pair, computed from its two tensors")
    print(f"{'module' if args.lora_update else 'key':{width}s}  {'dtype':9s} {'min':>11s} "
          f"{'max':>11s} {'mean':>11s} {'std (÷n)':>11s} {'zeros':>7s}  nan/inf")
    for key, e in report.items():
        if "error" in e:
            print(f"{key:{width}s}  {e['dtype']:9s} {e['error']}")
            continue
        nums = " ".join(f"{format_number(e[f]):>11s}"
                        for f in ("min", "max", "mean", "std"))
        bad = e["nan"] + e["posinf"] + e["neginf"]
        pair = f"  (r {e['rank']}, alpha {e['alpha']:.6g}, scale {e['scale']:.6g})" \
            if "rank" in e and not isinstance(e["scale"], str) else ""
        print(f"{key:{width}s}  {e['dtype']:9s} {nums} {e['sparsity']:7.1%}  "
              f"{bad:,}" + (f"  ({e['note']})" if e["note"] else "") + pair)
    return _failed(args, failed)


def _device_problem(device: str) -> str:
    """Why statistics cannot run on ``device`` here ("" when they can, and for the cpu)."""
    if device == "cpu":
        return ""
    try:
        from ckpt_inspector.core.devices import unavailable

        return unavailable(device)
    except ImportError as err:  # no torch (a light install)
        from ckpt_inspector.core.extras import missing

        return f"device {device} {missing(err) or f'needs torch: {err}'}"


def _lora_targets(args: argparse.Namespace, ckpt: Any) -> dict[str, Any] | int:
    """``--lora-update``: module name -> (its effective update as a tensor, what describes
    it), for the modules the keys name (a module's name or any key of its pair), else for
    every pair that has an update; or the exit code of a usage error."""
    from ckpt_inspector.core.adapters import find_adapter
    from ckpt_inspector.core.adapters.model import number

    adapter = find_adapter(ckpt)
    if adapter is None:
        return usage(f"{args.path}: no LoRA pairs (lora_A/lora_B, lora_down/lora_up) in it")
    if args.keys:
        modules = []
        for key in args.keys:
            module = adapter.module_named(key)
            if module is None:
                return usage(f"{args.path}: {key!r} is no adapted module nor a key of a "
                             "LoRA pair")
            if module.problem:
                return usage(f"{args.path}: {module.name}: {module.problem}")
            modules.append(module)
    else:
        modules = [m for m in adapter.modules if not m.problem]
    return {m.name: (adapter.update_tensor(m), {
        "update_of": [m.a_key, m.b_key], "rank": m.rank, "alpha": number(m.alpha),
        "scale": number(m.scale)}) for m in modules}


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

"""``arch``: which torchvision architecture a state_dict fits."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ckpt_inspector.cli import _common
from ckpt_inspector.cli._errors import EXIT_NOT_SAFE, EXIT_OK, fail, unreadable
from ckpt_inspector.core.errors import CheckpointError

NAMES = ("arch",)


def add_parser(sub: Any) -> None:
    ar = sub.add_parser("arch", help="which torchvision architecture a state_dict fits")
    ar.add_argument("path")
    ar.add_argument("--key", help="the part holding the state_dict (default: best guess)")
    ar.add_argument("--strip-prefix", action="append", default=[], metavar="P")
    ar.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from ckpt_inspector.core.ops import arch
    from ckpt_inspector.core.ops.export import plan as ex

    try:
        ckpt = _common.open_file(args.path)
        key = args.key if args.key is not None else (ex.sources(ckpt) or [None])[0]
        key = key if isinstance(key, str) else (key.key if key else "")
        items = ex.state_dict_items(ex.find_node(ckpt, key))
        mapping = ex.KeyRules(strip_prefixes=args.strip_prefix).apply([k for k, _ in items])
    except CheckpointError as err:
        return unreadable(args.path, err)
    shapes = {new: t.shape for (_old, new), (_k, t) in zip(mapping, items) if new}
    if args.strip_prefix:  # as asked
        prefix, found = ex.common_prefix(list(shapes)), arch.candidates(shapes)
    else:  # the prefix the weights sit under (module., model. beside optim.), if any
        prefix, found = arch.fit(shapes)
    out = [{"name": c.name, "score": round(c.score, 4), "num_classes": c.num_classes,
            "exact": c.exact, "input_shape": list(arch.input_size(c.name)),
            "missing": len(c.missing), "unexpected": len(c.unexpected),
            "mismatched": len(c.mismatched)} for c in found]
    if args.json:
        print(json.dumps({"key": key, "prefix": prefix, "candidates": out}))
    elif not out:
        return fail(f"{args.path}: no torchvision architecture shares keys and shapes with "
                    "these weights", EXIT_NOT_SAFE)
    else:
        if prefix:
            print(f"(the weights under {prefix!r}, without it)")
        for c in out:
            print(f"{c['name']:24s} {c['score']:6.1%}" + (" exact" if c["exact"] else "")
                  + (f" (num_classes={c['num_classes']})" if c["num_classes"] else ""))
    return EXIT_OK if out and out[0]["exact"] else EXIT_NOT_SAFE

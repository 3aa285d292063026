"""``devices``: the devices torch can load tensors onto (map_location)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ckpt_inspector.cli._errors import EXIT_OK

NAMES = ("devices",)


def add_parser(sub: Any) -> None:
    dev = sub.add_parser("devices", help="devices torch can load tensors onto (map_location), with "
                         "their free memory")
    dev.add_argument("--json", action="store_true", help="one JSON list on stdout")


def run(args: argparse.Namespace) -> int:
    return cmd_devices(args)


def cmd_devices(args: argparse.Namespace) -> int:
    from ckpt_inspector.core.devices import list_devices

    devices = list_devices()
    if args.json:
        print(json.dumps(devices))
    else:
        for d in devices:
            print(d["label"] + memory_text(d))
    return EXIT_OK


def memory_text(device: dict[str, Any]) -> str:
    """``  (12.0 GiB of 80.0 GiB free)``: a GPU's free memory (for cpu: the system's
    available memory), or nothing when unknown."""
    free, total = device.get("free_bytes"), device.get("total_bytes")
    if not isinstance(free, int):
        return ""
    from ckpt_inspector.core.summary import human_bytes

    word = "available" if device.get("id") == "cpu" else "free"
    of = f" of {human_bytes(total)}" if isinstance(total, int) else ""
    return f"  ({human_bytes(free)}{of} {word})"

"""``devices``: the devices torch can load tensors onto (map_location)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ckpt_inspector.cli._errors import EXIT_OK

NAMES = ("devices",)


def add_parser(sub: Any) -> None:
    dev = sub.add_parser("devices", help="devices torch can load tensors onto (map_location)")
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
            print(d["label"])
    return EXIT_OK

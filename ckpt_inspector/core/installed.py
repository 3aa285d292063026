"""Versions of installed packages, read from their ``*.dist-info/METADATA`` on ``sys.path``:
nothing is imported (torch takes seconds), and neither is ``importlib.metadata`` (it pulls in
the email package: 80 ms at every start of the command line)."""

from __future__ import annotations

import functools
import os
import re
import sys

_VERSION = re.compile(r"^Version:[ \t]*(\S+)", re.M)


@functools.cache
def version(name: str) -> str | None:
    """The installed version of distribution ``name`` (the first on ``sys.path``, as import
    finds it), or None when it is not installed."""
    wanted = re.sub(r"[-_.]+", "_", name).lower()
    for entry in sys.path:
        try:
            listing = os.listdir(entry or ".")
        except OSError:
            continue
        for item in listing:
            if not item.endswith(".dist-info"):
                continue
            dist = re.sub(r"[-_.]+", "_", item[:-len(".dist-info")].rsplit("-", 1)[0]).lower()
            if dist != wanted:
                continue
            try:
                with open(os.path.join(entry or ".", item, "METADATA"), encoding="utf-8",
                          errors="replace") as f:
                    m = _VERSION.search(f.read(4096))
            except OSError:
                continue
            if m:
                return m.group(1)
    return None

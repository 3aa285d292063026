"""Every command's --json output and exit status on a corpus of every format, against the
outputs recorded in tests/golden/cli.json.gz (see tests/golden.py; re-record with
``python tests/golden.py update`` when a change is meant to change them, and review the
diff)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

import golden

pytestmark = pytest.mark.slow


def _differences(old, new, where: str = "") -> list[str]:
    """Floats agree to float32 precision: an optimizer step's last bit differs between
    CPUs (vector widths), not between versions of this code."""
    if isinstance(old, float) and isinstance(new, (int, float)) and not isinstance(new, bool):
        return [] if math.isclose(old, new, rel_tol=1e-6, abs_tol=1e-9) else \
            [f"{where}: {old!r} -> {new!r}"]
    if isinstance(old, dict) and isinstance(new, dict):
        out = [f"{where}.{k}: missing" for k in old.keys() - new.keys()]
        out += [f"{where}.{k}: new" for k in new.keys() - old.keys()]
        for k in old.keys() & new.keys():
            out += _differences(old[k], new[k], f"{where}.{k}")
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in
                _differences(a, b, f"{where}[{i}]")]
    return [] if old == new else [f"{where}: {str(old)[:200]!r} -> {str(new)[:200]!r}"]


def test_every_command_prints_what_it_printed(tmp_path):
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, str(golden.HERE / "golden.py"), "make", str(corpus)],
                   check=True, timeout=600, capture_output=True)
    proc = subprocess.run([sys.executable, str(golden.HERE / "golden.py"), "record",
                           str(corpus)], timeout=600, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (corpus / "MARKER").exists() and not (corpus / "hostile" / "MARKER").exists()
    now, then = json.loads(proc.stdout), golden.load_golden()
    missing = sorted(then.keys() - now.keys())
    assert not missing, f"command lines no longer run: {missing[:10]}"
    changed = {name: d for name in then if (d := _differences(then[name], now[name]))}
    assert not changed, "\n".join(f"{name}: {d[:5]}" for name, d in list(changed.items())[:20])

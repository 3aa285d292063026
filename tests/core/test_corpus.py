"""The hostile and benign corpus (tests/corpus.py): right verdict, right finding, nothing runs."""

from __future__ import annotations

import json
import subprocess
import sys

from ckpt_inspector.core import CheckpointError, open_checkpoint
from ckpt_inspector.core.scan import scan

import corpus as corpus_mod
from support import ROOT, run_cli


def verdict_of(path):
    try:
        ckpt = open_checkpoint(path)
    except CheckpointError as err:
        if err.partial is None:
            return "refused", set(), str(err)
        report = scan(err.partial, str(err))
    else:
        report = scan(ckpt)
    return report.verdict, {f.code for f in report.findings}, report


def test_every_sample_gets_its_verdict_and_finding(corpus):
    wrong = []
    for s in corpus:
        verdict, codes, _report = verdict_of(s.path)
        if verdict != s.expect or (s.finding and s.finding not in codes):
            wrong.append(f"{s.name}: {verdict} {sorted(codes)}, expected {s.expect} "
                         f"with {s.finding} ({s.about})")
    assert not wrong, "\n".join(wrong)


def test_no_benign_sample_is_dangerous_and_none_malicious_is_safe(corpus):
    for s in corpus:
        verdict = verdict_of(s.path)[0]
        if s.malicious:
            assert verdict in ("dangerous", "refused"), s.name
        else:
            assert verdict != "dangerous", s.name


def test_scanning_imports_nothing_a_file_names(corpus):
    """No module named in a file gets imported while reading it (sys.modules before/after)."""
    code = f"""
import sys
sys.path.insert(0, {str(ROOT / 'tests')!r})
from ckpt_inspector.core import CheckpointError, open_checkpoint
from ckpt_inspector.core.scan import scan
from ckpt_inspector.cli import main
paths = sys.argv[1:]
import io, contextlib
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    main(["scan", paths[0]])  # warm up: the reader's own imports happen here
    before = set(sys.modules)
    for p in paths:
        main(["scan", p])
        main(["info", p, "--json"])
new = sorted(set(sys.modules) - before)
print(new)
assert not new, new
"""
    paths = [str(s.path) for s in corpus]
    proc = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_payloads_are_real(tmp_path, torch):
    """The live samples do create their marker when unpickled for real (in a child)."""
    samples = corpus_mod.build(tmp_path / "live", tmp_path / "LIVE-MARKER")
    marker = tmp_path / "LIVE-MARKER"
    dead = []
    for s in samples:
        if not s.live:
            continue
        subprocess.run([sys.executable, "-c",
                        "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))", str(s.path)],
                       capture_output=True, timeout=60, cwd=tmp_path)
        if not marker.exists():
            dead.append(s.name)
        marker.unlink(missing_ok=True)
    assert not dead, f"payloads that do not run: {dead}"


def test_cli_scan_reports_every_malicious_sample(corpus):
    for s in corpus:
        if not s.malicious:
            continue
        proc = run_cli("scan", str(s.path), "--json")
        if s.expect == "refused":
            assert proc.returncode == 3 and len(proc.stderr.strip().splitlines()) == 1, s.name
            continue
        assert proc.returncode in (1, 3), (s.name, proc.stderr)
        report = json.loads(proc.stdout)
        assert report["verdict"] == "dangerous", s.name
        assert all("message" in f and "severity" in f for f in report["findings"])

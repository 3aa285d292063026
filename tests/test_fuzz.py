"""A bounded fuzz round over the reader and the scanner (the long runs are fuzz/fuzz_reader.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from support import ROOT

FUZZ_SECONDS = 40


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-seeds")
    subprocess.run([sys.executable, str(ROOT / "fuzz" / "make_seeds.py"), str(folder)],
                   check=True, timeout=300, capture_output=True)
    return folder


@pytest.mark.slow
def test_fuzz_reader_and_scanner(seeds, tmp_path):
    script = str(ROOT / "fuzz" / "fuzz_reader.py")
    if importlib.util.find_spec("atheris") is not None:
        out = tmp_path / "found"
        out.mkdir()
        cmd = [sys.executable, script, str(out), str(seeds), f"-max_total_time={FUZZ_SECONDS}",
               "-timeout=10", "-rss_limit_mb=3000", f"-artifact_prefix={tmp_path}/"]
    else:  # coverage-guided fuzzing needs atheris; mutate the seeds at random instead
        cmd = [sys.executable, script, "--random", str(FUZZ_SECONDS), str(seeds)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=FUZZ_SECONDS + 240,
                          cwd=tmp_path)
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert proc.returncode == 0 and not crashes, (crashes, proc.stderr[-4000:])

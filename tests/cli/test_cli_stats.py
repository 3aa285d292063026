"""``ckpt-inspector stats``: statistics, histograms, progress lines and usage errors."""

from __future__ import annotations

import json

import pytest

from support import run_cli


def test_stats_command(resnet_params, cuda_file, torch):
    path, sd = resnet_params
    proc = run_cli("stats", str(path), "conv1.weight", "bn1.num_batches_tracked",
                   "--bins", "8", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["tensors"]
    conv = report["conv1.weight"]
    w = sd["conv1.weight"].double()
    assert conv["shape"] == [64, 3, 7, 7] and conv["std"] == pytest.approx(
        float(w.std(unbiased=False)), rel=1e-6)
    assert sum(conv["histogram"]["counts"]) == w.numel()
    assert report["bn1.num_batches_tracked"]["kind"] == "int"
    text = run_cli("stats", str(cuda_file[0]))
    assert text.returncode == 0 and "0.weight" in text.stdout and "nan/inf" in text.stdout
    progress = run_cli("stats", str(path), "fc.weight", "--progress").stdout.splitlines()
    assert json.loads(progress[0])["event"] == "progress"
    assert json.loads(progress[-1])["tensors"]["fc.weight"]["numel"] == 512_000
    assert run_cli("stats", str(path), "no.such.key").returncode == 2
    assert run_cli("stats", str(path), "--device", "nonsense:7").returncode == 2

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
    # which std it is, where a torch user compares it with t.std() (which divides by n-1)
    assert "std (÷n)" in text.stdout
    assert "correction=0" in " ".join(run_cli("stats", "--help").stdout.split())
    progress = run_cli("stats", str(path), "fc.weight", "--progress").stdout.splitlines()
    assert json.loads(progress[0])["event"] == "progress"
    assert json.loads(progress[-1])["tensors"]["fc.weight"]["numel"] == 512_000
    assert run_cli("stats", str(path), "no.such.key").returncode == 2
    assert run_cli("stats", str(path), "--device", "nonsense:7").returncode == 2


def test_json_spread_and_norm_agree_with_float64_to_the_last_digits(torch, tmp_path):
    """``std`` and ``l2`` are printed with 17 digits: every one of them is right (the squares
    are accumulated in float64, as the sums), whatever the dtype, the mean's distance from
    zero, and however many chunks and threads the tensor is read in."""
    import numpy as np

    g = torch.Generator().manual_seed(3)
    tensors = {
        "conv1.weight": torch.randn(64, 3, 7, 7, generator=g) * 0.025,
        "far.from.zero": 100 + torch.randn(1_500_000, generator=g) * 0.01,  # many chunks
        "half": (torch.randn(70_000, generator=g) * 3).half(),
        "brain": (torch.randn(70_000, generator=g) - 2).bfloat16(),
        "double": torch.randn(300_000, generator=g, dtype=torch.float64) * 1e-3,
    }
    path = tmp_path / "weights.pt"
    torch.save(tensors, path)
    proc = run_cli("stats", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["tensors"]
    for key, t in tensors.items():
        x = t.double().numpy().ravel()
        want = {"std": float(np.std(x)), "l2": float(np.sqrt(np.dot(x, x))),
                "mean": float(np.mean(x)), "abs_mean": float(np.mean(np.abs(x)))}
        for name, value in want.items():
            assert report[key][name] == pytest.approx(value, rel=1e-12, abs=0), (key, name)

"""Trusted loading: each level of trust loads exactly what it should, and no more."""

from __future__ import annotations

import pytest

from ckpt_inspector.core.ops.torch_load import TrustError, trusted_load

from support import run_cli


def test_safe_file_loads_weights_only(torch, training_ckpt):
    result = trusted_load(str(training_ckpt[0]))
    assert result.mode == "weights-only"
    assert result.obj["epoch"] == 7


def test_torchvision_model_loads_with_its_classes_allowed(torch, resnet_full):
    path, model = resnet_full
    result = trusted_load(str(path))
    assert result.mode == "weights-only + allowed classes"
    assert "torchvision.models.resnet.ResNet" in result.allowed
    loaded = result.obj
    assert type(loaded).__name__ == "ResNet"
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_other_code_needs_run_code(torch, numpy_namespace_file):
    path = str(numpy_namespace_file[0])
    with pytest.raises(TrustError, match="run code"):
        trusted_load(path)
    result = trusted_load(path, run_code=True)  # our own benign file: running it is fine
    assert result.mode == "full (ran the file's code)"
    assert result.obj["args"].arch == "resnet18"


def test_torchscript_needs_run_code(torch, jit_trace):
    with pytest.raises(TrustError, match="TorchScript"):
        trusted_load(str(jit_trace[0]))


def test_dangerous_file_needs_two_overrides(payload_files, marker):
    for kind in ("torch-zip", "torch-legacy", "pickle"):
        path = str(payload_files[kind])
        with pytest.raises(TrustError, match="dangerous"):
            trusted_load(path)
        with pytest.raises(TrustError, match="dangerous"):
            trusted_load(path, run_code=True)
    assert not marker.exists()


def test_map_location(torch, cuda_file):
    result = trusted_load(str(cuda_file[0]), "cpu")
    assert {str(t.device) for t in result.obj.values()} == {"cpu"}


def test_cli_load_rules(resnet_full, numpy_namespace_file, payload_files, marker):
    ok = run_cli("load", str(resnet_full[0]), "--json")
    assert ok.returncode == 0, ok.stderr
    refused = run_cli("load", str(numpy_namespace_file[0]))
    assert refused.returncode == 1 and "run code" in refused.stderr
    bad = run_cli("load", str(payload_files["torch-zip"]), "--run-code")
    assert bad.returncode == 1 and "dangerous" in bad.stderr
    usage = run_cli("load", str(payload_files["torch-zip"]), "--allow-dangerous")
    assert usage.returncode == 2
    assert not marker.exists()

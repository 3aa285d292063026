"""The verdict: payloads never run, every hostile file is judged dangerous, ordinary files right."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ckpt_inspector.core import CheckpointError, open_checkpoint
from ckpt_inspector.core.allowlist import WEIGHTS_ONLY_GLOBALS
from ckpt_inspector.core.scan import classify, scan


def scan_path(path):
    """The verdict, also for files whose stream breaks (as ``ckpt-inspector scan`` does)."""
    try:
        ckpt = open_checkpoint(path)
        error = None
    except CheckpointError as err:
        assert err.partial is not None, f"{path}: no partial result to scan"
        ckpt, error = err.partial, str(err)
    return scan(ckpt, error)


def test_allowlist_matches_installed_torch(torch):
    from torch._weights_only_unpickler import _get_allowed_globals

    assert set(_get_allowed_globals()) == WEIGHTS_ONLY_GLOBALS, (
        "torch's allowlist changed: run tools/gen_allowlist.py")


def test_payload_fixtures_are_real(payload_builders, tmp_path):
    """Unpickling the same payloads in a child process does create the marker, so the
    tests below would notice if the reader ran them."""
    for name, build in payload_builders.items():
        probe = tmp_path / f"live-{name}"
        subprocess.run([sys.executable, "-c",
                        "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
                       input=build(f"touch {probe}"), check=True, timeout=60)
        assert probe.exists(), name


@pytest.mark.parametrize("kind", ["torch-zip", "torch-legacy", "pickle", "pickle-p0",
                                  "pickle-p5", "computed-import", "trailing"])
def test_payloads_are_dangerous_and_never_run(payload_files, marker, kind):
    report = scan_path(payload_files[kind])
    assert report.verdict == "dangerous", report.findings
    assert not marker.exists()
    if kind not in ("computed-import", "trailing"):
        assert "posix.system" in report.globals or "os.system" in report.globals
        [finding] = [f for f in report.findings if f.code == "dangerous-import"]
        assert "touch" in finding.message and finding.offset is not None
    if kind == "computed-import":
        assert any(f.code == "dynamic-import" for f in report.findings)
    if kind == "trailing":
        assert any(f.code == "trailing-data" for f in report.findings)


@pytest.mark.parametrize(("name", "expected"), [
    ("collections.OrderedDict", "safe"),
    ("torch._utils._rebuild_tensor_v2", "safe"),
    ("torch.FloatStorage", "safe"),
    ("torchvision.models.resnet.ResNet", "needs-trust"),
    ("argparse.Namespace", "needs-trust"),
    ("numpy.core.multiarray.scalar", "needs-trust"),
    ("__torch__.torch.nn.modules.conv.Conv2d", "needs-trust"),
    ("torch.jit._pickle.build_intlist", "needs-trust"),
    ("os.system", "dangerous"),
    ("posix.system", "dangerous"),
    ("nt.system", "dangerous"),
    ("subprocess.Popen", "dangerous"),
    ("builtins.eval", "dangerous"),
    ("builtins.getattr", "dangerous"),
    ("builtins.__import__", "dangerous"),
    ("runpy._run_code", "dangerous"),
    ("torch.load", "dangerous"),
    ("torch.serialization.load", "dangerous"),
    ("os.path.join", "dangerous"),
])
def test_classify(name, expected):
    module, _, attr = name.rpartition(".")
    assert classify(module, attr) == expected


def test_dotted_name_walk_to_a_dangerous_module():
    assert classify("torch.serialization", "os.system") == "dangerous"
    assert classify("torch", "serialization.os.system") == "dangerous"
    assert classify("argparse", "_os.system") == "dangerous"
    assert classify("collections", "OrderedDict.__init__.__globals__") == "dangerous"
    assert classify("mypackage.models", "Outer.Inner") == "needs-trust"  # a nested class


@pytest.mark.parametrize("fixture", [
    "tensor_file", "tensors_file", "resnet_params", "training_ckpt", "safetensors_file",
    "legacy_dict", "dtypes_file", "views_file", "dataparallel_file", "lightning_file",
    "quantized_file", "cuda_file"])
def test_ordinary_weights_files_are_safe(fixture, request):
    value = request.getfixturevalue(fixture)
    path = value[0] if isinstance(value, tuple) else value
    report = scan_path(path)
    assert report.verdict == "safe", report.findings


@pytest.mark.parametrize("fixture", ["resnet_full", "legacy_model", "jit_trace",
                                     "numpy_namespace_file", "bare_pickle"])
def test_files_with_code_need_trust(fixture, request):
    value = request.getfixturevalue(fixture)
    path = value[0] if isinstance(value, tuple) else value
    report = scan_path(path)
    assert report.verdict == "needs-trust", report.findings
    assert all(f.severity != "dangerous" for f in report.findings)


def test_onnx_is_safe(onnx_inline):
    assert scan_path(onnx_inline).verdict == "safe"


def test_truncated_pickle_is_dangerous(training_ckpt, tmp_path):
    import zipfile

    src, _ = training_ckpt
    broken = tmp_path / "cut.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(broken, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith("data.pkl"):
                data = data[: len(data) // 2]
            zout.writestr(item, data)
    report = scan_path(broken)
    assert report.verdict == "dangerous"
    assert any(f.code == "malformed" for f in report.findings)

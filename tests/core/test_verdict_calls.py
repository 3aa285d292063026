"""The verdict comes from what a file calls: every trick of issue 12 section 2 is
dangerous, what people really save is not, and the trusted load builds classes only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest

from ckpt_inspector.core.callables import resolve

import hostile_calls
from support import ROOT, run_cli, scan_file


def verdict_of(path):
    return scan_file(path)[1]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Each sample in its own folder with its own marker path."""
    out = []
    for name, build, shown in hostile_calls.HOSTILE:
        folder = tmp_path_factory.mktemp(name.split(".")[0])
        marker = folder / "MARKER"
        path = folder / name
        path.write_bytes(build(marker))
        out.append((name, path, marker, shown))
    return out


@pytest.mark.slow
def test_every_trick_really_runs_its_payload_under_torch_load(hostile):
    """Proof that the samples are real: torch.load(weights_only=False) in a child process
    creates each marker (the child is thrown away; this process never unpickles them)."""
    script = (
        "import sys, torch, warnings\nwarnings.simplefilter('ignore')\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n        torch.load(p, weights_only=False)\n"
        "    except BaseException:\n        pass\n")
    subprocess.run([sys.executable, "-c", script, *(str(p) for _, p, _, _ in hostile)],
                   timeout=300, capture_output=True, cwd=hostile[0][1].parent)
    ran = {name for name, _, marker, _ in hostile if marker.exists()}
    assert ran == {name for name, *_ in hostile}
    for _, _, marker, _ in hostile:
        marker.unlink()


@pytest.mark.parametrize("index", range(len(hostile_calls.HOSTILE)),
                         ids=[n for n, *_ in hostile_calls.HOSTILE])
def test_each_trick_is_dangerous_and_named(hostile, index):
    _name, path, marker, shown = hostile[index]
    report = verdict_of(path)
    assert report.verdict == "dangerous", [f.message for f in report.findings]
    dangerous = [f for f in report.findings if f.severity == "dangerous"]
    if shown:
        assert any(shown in f.message or f.name == shown for f in dangerous), \
            [f.message for f in dangerous]
    assert not marker.exists()


def test_cli_scan_exits_1_and_names_the_call(hostile):
    _name, path, marker, _shown = hostile[[n for n, *_ in hostile].index("collect_env_run.pkl")]
    proc = run_cli("scan", "--json", str(path))
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["verdict"] == "dangerous"
    assert any("torch.utils.collect_env.run" in f["message"] and "touch" in f["message"]
               for f in out["findings"])
    assert not marker.exists()


# -- what people really save -------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_files(torch, tmp_path_factory):
    import platform

    import numpy as np
    import torchvision
    from torchvision.models import ResNet18_Weights

    out = tmp_path_factory.mktemp("real")
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=1,
                                               num_heads=1, hidden_dim=8, mlp_dim=8)
    linear = torch.nn.Linear(2, 2)
    objects = {
        "vit_whole.pt": vit,  # holds functools.partial(nn.LayerNorm, eps=1e-6)
        "lightning.ckpt": {"state_dict": linear.state_dict(), "epoch": 1,
                           "hyper_parameters": {"weights": ResNet18_Weights.IMAGENET1K_V1,
                                                "lr": 0.1}},
        "uname.pt": {"platform": platform.uname()},
        "rng.pt": {"np": np.random.default_rng(0), "torch": torch.get_rng_state()},
        "transformer.pt": torch.nn.TransformerEncoderLayer(8, 2, 16),  # keeps F.relu
    }
    paths = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, obj in objects.items():
            torch.save(obj, out / name)
            paths[name] = out / name
    return paths


@pytest.mark.parametrize("name", ["vit_whole.pt", "lightning.ckpt", "uname.pt", "rng.pt",
                                  "transformer.pt"])
def test_what_people_save_needs_trust_not_dangerous(real_files, name):
    report = verdict_of(real_files[name])
    assert report.verdict == "needs-trust", [
        f.message for f in report.findings if f.severity == "dangerous"]


def test_partial_of_a_class_is_a_reconstruction_of_a_denied_function_dangerous(tmp_path):
    from hostile_calls import call, g, pickle_of

    cls = pickle_of(call(g("functools", "partial"), g("torch.nn.modules.normalization",
                                                      "LayerNorm")))
    (tmp_path / "cls.pkl").write_bytes(cls)
    assert verdict_of(tmp_path / "cls.pkl").verdict == "needs-trust"
    fn = pickle_of(call(g("functools", "partial"), g("posix", "system")))
    (tmp_path / "fn.pkl").write_bytes(fn)
    assert verdict_of(tmp_path / "fn.pkl").verdict == "dangerous"


def test_table_tells_classes_from_functions():
    assert resolve("torch.nn.modules.conv", "Conv2d")[0] == "c"
    assert resolve("torch", "save")[0] == "f"
    assert resolve("operator", "getitem") == ("f", "_operator.getitem")
    assert resolve("argparse", "_os.system")[0] == "f"
    assert resolve("torch", "os")[0] == "m"
    assert resolve("platform", "uname_result")[0] == "r"
    assert resolve("numpy", "memmap")[0] == "a"
    assert resolve("some_unknown_package.models", "Net")[0] == "?"


def test_table_matches_the_installed_libraries(torch):
    """A sample of the shipped table against the installed libraries (regenerate with
    tools/gen_callables.py when they change)."""
    import importlib

    import torchvision  # noqa: F401

    for module, name in [("torch.nn.modules.linear", "Linear"), ("torch", "load"),
                         ("torchvision.io", "write_file"), ("torchvision.utils", "save_image"),
                         ("collections", "OrderedDict"), ("builtins", "eval"),
                         ("torchvision.datasets.utils", "download_url")]:
        obj = getattr(importlib.import_module(module), name)
        kind = resolve(module, name)[0]
        assert (kind in ("c", "r", "a")) == isinstance(obj, type), (module, name, kind)


# -- the trusted load ------------------------------------------------------------------------
TORCHVISION_FUNCTIONS = ["torchvision.io.write_file", "torchvision.io.read_file",
                         "torchvision.utils.save_image",
                         "torchvision.datasets.utils.download_url"]


@pytest.mark.parametrize("name", TORCHVISION_FUNCTIONS)
def test_trusted_load_never_allows_a_torchvision_function(torch, name):
    from ckpt_inspector.core.ops.torch_load import TrustError, allowed_class

    with pytest.raises(TrustError, match=r"not a class|run code"):
        allowed_class(name)


def test_trusted_load_allows_module_classes(torch):
    from ckpt_inspector.core.ops.torch_load import TrustError, allowed_class

    assert allowed_class("torchvision.models.resnet.ResNet").__name__ == "ResNet"
    assert allowed_class("torch.nn.modules.conv.Conv2d").__name__ == "Conv2d"
    with pytest.raises(TrustError):
        allowed_class("torchvision.models.resnet.ResNet18_Weights")  # an enum, not a module


class _Call:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def test_load_without_run_code_refuses_a_file_calling_write_file(torch, tmp_path):
    """A file calling torchvision.io.write_file: `load` without --run-code writes nothing."""
    import torchvision

    marker = tmp_path / "MARKER"
    path = tmp_path / "writes.pt"
    data = torch.frombuffer(bytearray(b"x"), dtype=torch.uint8)
    torch.save({"w": torch.ones(2), "x": _Call(torchvision.io.write_file, str(marker), data)},
               path)
    proc = run_cli("load", str(path))
    assert proc.returncode != 0
    assert not marker.exists()
    assert verdict_of(path).verdict == "dangerous"


def test_gen_callables_is_the_shipped_table_format():
    """The shipped table loads and names its generator's versions."""
    import gzip

    raw = (ROOT / "ckpt_inspector" / "core" / "callables.tsv.gz").read_bytes()
    first = gzip.decompress(raw).split(b"\n", 1)[0].decode()
    assert first.startswith("# generated by tools/gen_callables.py")
    assert os.path.getsize(ROOT / "ckpt_inspector" / "core" / "callables.tsv.gz") < 2 << 20

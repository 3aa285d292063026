"""Exports: state_dict and safetensors written without torch, models verified by running."""

from __future__ import annotations

import json
import os
import warnings

import pytest

from ckpt_inspector.core import open_checkpoint
from ckpt_inspector.core.errors import ExportError
from ckpt_inspector.core.ops.export.model import export_model
from ckpt_inspector.core.ops.export.model_source import ModelSource
from ckpt_inspector.core.ops.export.plan import KeyRules, common_prefix, make_plan, sources
from ckpt_inspector.core.ops.export.verify import verify_state_dict
from ckpt_inspector.core.ops.export.writers import export_state_dict

from support import drive, run_cli


def same(torch, a, b):
    return (a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.reshape(-1).contiguous().view(torch.uint8), b.reshape(-1).contiguous().view(torch.uint8)))


def test_safetensors_round_trip_is_bit_exact(torch, dtypes_file, tmp_path):
    from safetensors.torch import load_file

    path, data = dtypes_file
    ckpt = open_checkpoint(path)
    from ckpt_inspector.core.dtypes import SAFETENSORS_CODES

    storable = set(SAFETENSORS_CODES.values())  # no complex32/128 in safetensors
    keep = [k for k, v in data.items() if str(v.dtype)[6:] in storable]
    plan = make_plan(ckpt, "", KeyRules(include=[f"^{k}$" for k in keep]), fmt="safetensors",
                     metadata={"source": "test"})
    out = tmp_path / "all.safetensors"
    drive(export_state_dict(plan, str(out)))
    report = drive(verify_state_dict(plan, str(out)))
    assert report["bit_exact"] == len(keep) and not report["problems"]
    loaded = load_file(str(out))
    for k in keep:
        assert same(torch, loaded[k], data[k]), k
    assert open_checkpoint(out).metadata["__metadata__"] == {"source": "test"}


def test_state_dict_pt_loads_weights_only_and_keeps_views(torch, views_file, tmp_path):
    path, data = views_file
    plan = make_plan(open_checkpoint(path), "")
    out = tmp_path / "views.pt"
    drive(export_state_dict(plan, str(out)))
    loaded = torch.load(out, weights_only=True)
    for k, v in data.items():
        assert same(torch, loaded[k], v.detach()), k
    assert loaded["row"].untyped_storage().data_ptr() == loaded["base"].untyped_storage().data_ptr()
    assert drive(verify_state_dict(plan, str(out)))["bit_exact"] == len(data)


def test_every_dtype_to_pt(torch, dtypes_file, quantized_file, tmp_path):
    for path, data in (dtypes_file, quantized_file):
        out = tmp_path / f"{path.stem}.pt"
        keep = [k for k, v in data.items() if not (v.is_quantized and v.qscheme() in (
            torch.per_channel_affine, torch.per_channel_symmetric))]
        plan = make_plan(open_checkpoint(path), "", KeyRules(include=[f"^{k}$" for k in keep]))
        drive(export_state_dict(plan, str(out)))
        loaded = torch.load(out, weights_only=True)
        for k in keep:
            got, want = loaded[k], data[k]
            if want.is_quantized:
                assert torch.equal(got.int_repr(), want.int_repr()) and got.q_scale() == \
                    want.q_scale(), k
            else:
                assert same(torch, got, want), k


def test_cast_to_bfloat16_and_float16_matches_torch(torch, resnet_params, tmp_path):
    path, sd = resnet_params
    for cast in ("bfloat16", "float16"):
        plan = make_plan(open_checkpoint(path), "", cast=cast, fmt="safetensors")
        out = tmp_path / f"cast_{cast}.safetensors"
        drive(export_state_dict(plan, str(out)))
        from safetensors.torch import load_file

        loaded = load_file(str(out))
        for k, v in sd.items():
            want = v.to(getattr(torch, cast)) if v.is_floating_point() else v
            assert same(torch, loaded[k], want), (cast, k)
        report = drive(verify_state_dict(plan, str(out)))
        assert report["cast"] == sum(v.is_floating_point() for v in sd.values())
        assert 0 < report["max_abs_diff"] < 0.01


def test_dataparallel_prefix_stripped_loads_strict(torch, dataparallel_file, tmp_path):
    path, sd = dataparallel_file
    ckpt = open_checkpoint(path)
    keys = list(sd)
    assert common_prefix(keys) == "module."
    plan = make_plan(ckpt, "", KeyRules(strip_prefixes=["module."]))
    out = tmp_path / "plain.pt"
    drive(export_state_dict(plan, str(out)))
    from support import TinyNet

    model = TinyNet.make(torch)
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)


def test_training_checkpoint_subtree_is_the_default_source(training_ckpt):
    found = sources(open_checkpoint(training_ckpt[0]))
    assert found[0].key == "model_state_dict"


def test_gpu_saved_file_becomes_a_cpu_file(torch, cuda_file, tmp_path):
    path, sd = cuda_file
    plan = make_plan(open_checkpoint(path), "", device="cpu")
    out = tmp_path / "cpu.pt"
    drive(export_state_dict(plan, str(out)))
    assert {t.device for _p, n in open_checkpoint(out).tensors() for t in [n.tensor]} == {"cpu"}
    loaded = torch.load(out, weights_only=True)  # no map_location needed on this machine
    for k, v in sd.items():
        assert same(torch, loaded[k], v), k


def test_key_rules_and_errors(tensors_file, tmp_path):
    ckpt = open_checkpoint(tensors_file[0])
    plan = make_plan(ckpt, "", KeyRules(renames=[("^(.)$", r"layer.\1")], exclude=["z"]))
    assert [k for k, _ in plan.items] == ["layer.x", "layer.y"] and plan.excluded == 1
    with pytest.raises(ExportError, match="both become"):
        make_plan(ckpt, "", KeyRules(renames=[(".*", "same")]))
    with pytest.raises(ExportError, match="no tensor"):
        make_plan(ckpt, "", KeyRules(include=["nothing"]))
    out = tmp_path / "t.pt"
    drive(export_state_dict(make_plan(ckpt, ""), str(out)))
    with pytest.raises(ExportError, match="exists"):
        drive(export_state_dict(make_plan(ckpt, ""), str(out)))
    with pytest.raises(ExportError, match="source"):
        drive(export_state_dict(make_plan(ckpt, ""), str(tensors_file[0]), overwrite=True))
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".partial")]


def test_resnet18_state_dict_to_torchscript_onnx_and_pt2(torch, resnet_params, tmp_path):
    path, _ = resnet_params
    for target, options in (("torchscript", {}), ("onnx", {"exporter": "dynamo"}),
                            ("onnx", {"exporter": "legacy", "dynamic_batch": True}),
                            ("pt2", {})):
        out = tmp_path / f"r18_{target}_{options.get('exporter', '')}.{target}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = drive(export_model(str(path), target, str(out), ModelSource(), **options))
        assert result["passed"], result
        assert result["model"].startswith("torchvision resnet18")
        assert result["input_shape"] == [1, 3, 224, 224]
        assert result["max_abs_diff"] < 1e-4
        if options.get("dynamic_batch"):
            assert result["dynamic_batch_checked"]


def test_cli_export_and_refusals(resnet_full, payload_files, marker, tmp_path):
    out = tmp_path / "r18.pt"
    refused = run_cli("export", str(resnet_full[0]), "--to", "torchscript", "-o", str(out))
    assert refused.returncode == 1 and "--trust" in refused.stderr
    ok = run_cli("export", str(resnet_full[0]), "--to", "torchscript", "-o", str(out),
                 "--trust", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["passed"]
    for kind in ("torch-zip", "pickle"):
        bad = run_cli("export", str(payload_files[kind]), "--to", "torchscript", "-o",
                      str(tmp_path / f"evil_{kind}.pt"), "--trust", "--run-code")
        assert bad.returncode == 1 and "dangerous" in bad.stderr
    sd = run_cli("export", str(resnet_full[0]), "--to", "safetensors", "-o",
                 str(tmp_path / "r18.safetensors"), "--dtype", "float16", "--progress")
    lines = [json.loads(line) for line in sd.stdout.splitlines()]
    assert lines[0]["event"] == "progress" and lines[-1]["event"] == "result"
    assert lines[-1]["passed"] and lines[-1]["tensors"] == len(resnet_full[1].state_dict())
    assert not marker.exists()


# -- regressions from the export review ----------------------------------------------------
BUILDERS = '''
import torch


def tiny():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                               torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10))


class Fixed(torch.nn.Module):
    """Runs at any batch size, but int() of the batch size makes export specialize it."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x) + torch.zeros(int(x.shape[0]), 3)


class Noisy(torch.nn.Module):
    """A different output on every run: no export of it can pass verification."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x) + torch.rand(x.shape[0], 3)


def fixed():
    return Fixed()


def noisy():
    return Noisy()
'''


@pytest.fixture(scope="module")
def models(torch, tmp_path_factory):
    """State_dicts of small models and ``export_builders_core:NAME`` builders for them."""
    import sys

    folder = tmp_path_factory.mktemp("builders")
    (folder / "export_builders_core.py").write_text(BUILDERS)
    sys.path.insert(0, str(folder))
    import export_builders_core as b

    paths = {}
    for name in ("tiny", "fixed", "noisy"):
        paths[name] = folder / f"{name}_sd.pt"
        torch.save(getattr(b, name)().state_dict(), paths[name])
    paths["tiny_module"] = folder / "tiny_module.pt"
    torch.save(b.tiny(), paths["tiny_module"])
    yield paths
    sys.path.remove(str(folder))
    sys.modules.pop("export_builders_core", None)


def tiny_export(models, target, out, **options):
    source = ModelSource(builder=f"export_builders_core:{options.pop('builder', 'tiny')}")
    options.setdefault("input_shape", (1, 3, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return drive(export_model(str(models[options.pop("source", "tiny")]), target, str(out),
                                  source, **options))


def leftovers(folder):
    return [f for f in os.listdir(folder) if f.endswith(".partial") or f.startswith(".")]


@pytest.fixture(scope="module")
def overflow_file(torch, tmp_path_factory):
    path = tmp_path_factory.mktemp("overflow") / "overflow.pt"
    torch.save({"w": torch.tensor([1.0, 70000.0, -1e6, 3.0]), "ok": torch.ones(3)}, path)
    return path


def test_cast_overflow_fails_the_export_and_writes_nothing(overflow_file, tmp_path):
    """fp32 70000 and -1e6 become ±inf in float16: a loss the verification must catch, and a
    failed verification leaves the target as it was."""
    ckpt = open_checkpoint(overflow_file)
    for fmt in ("safetensors", "pt"):
        out = tmp_path / f"half.{fmt}"
        out.write_bytes(b"old content")
        result = drive(export_state_dict(make_plan(ckpt, "", cast="float16", fmt=fmt), str(out),
                                         overwrite=True))
        assert not result["passed"] and not result["written"], result
        [problem] = result["problems"]
        assert problem.startswith("w: 2 finite value(s) overflow to ±inf in float16"), problem
        assert out.read_bytes() == b"old content"
        assert leftovers(tmp_path) == []
    # bfloat16 holds them: no problem, written
    out = tmp_path / "bf16.safetensors"
    result = drive(export_state_dict(make_plan(ckpt, "", cast="bfloat16", fmt="safetensors"),
                                     str(out)))
    assert result["passed"] and result["written"] and out.exists()


def test_cast_is_checked_against_torchs_own_cast(torch, tmp_path):
    """A written file whose values are not the cast of the source (a changed value, a NaN
    that appeared) fails, even where every value is finite."""
    from safetensors.torch import save_file

    src = tmp_path / "src.pt"
    torch.save({"v": torch.tensor([1.0, 2.0, 3.0, float("nan")])}, src)
    plan = make_plan(open_checkpoint(src), "", cast="float16", fmt="safetensors")
    wrong = tmp_path / "wrong.safetensors"
    save_file({"v": torch.tensor([1.0, 2.5, float("nan"), 5.0], dtype=torch.float16)},
              str(wrong))
    problems = " | ".join(drive(verify_state_dict(plan, str(wrong)))["problems"])
    assert "1 value(s) became NaN" in problems
    assert "1 NaN value(s) were not kept" in problems
    assert "3 value(s) differ from torch's own cast to float16" in problems


def test_float64_to_float16_rounds_like_torch(torch, tmp_path):
    """torch casts float64 → float → half (two roundings); a value just above a float16
    halfway point shows the difference."""
    x = torch.tensor([1 + 2**-11 + 2**-40, -3.0, 1e-9], dtype=torch.float64)
    src = tmp_path / "f64.pt"
    torch.save({"x": x}, src)
    out = tmp_path / "f16.pt"
    result = drive(export_state_dict(make_plan(open_checkpoint(src), "", cast="float16"),
                                     str(out)))
    assert result["passed"], result
    got = torch.load(out, weights_only=True)["x"]
    assert torch.equal(got.view(torch.int16), x.to(torch.float16).view(torch.int16))


def test_written_files_follow_the_umask_and_keep_a_replaced_files_mode(tensors_file,
                                                                       tmp_path):
    plan = make_plan(open_checkpoint(tensors_file[0]), "")
    old = os.umask(0o027)
    try:
        out = tmp_path / "new.safetensors"
        plan.fmt = "safetensors"
        result = drive(export_state_dict(plan, str(out)))
        assert os.stat(out).st_mode & 0o777 == 0o640
        assert result["bytes"] == os.path.getsize(out)  # the file, not the tensors
        os.chmod(out, 0o604)
        drive(export_state_dict(plan, str(out), overwrite=True))
        assert os.stat(out).st_mode & 0o777 == 0o604
    finally:
        os.umask(old)


def test_usage_errors_are_their_own_kind(tensors_file, tmp_path):
    from ckpt_inspector.core.errors import ExportUsageError
    from ckpt_inspector.core.ops.export.plan import check_device

    ckpt = open_checkpoint(tensors_file[0])
    for bad in (lambda: make_plan(ckpt, "", KeyRules(include=["("])),
                lambda: make_plan(ckpt, "nope"),
                lambda: make_plan(ckpt, "", KeyRules(renames=[(".*", "same")])),
                lambda: make_plan(ckpt, "", device="banana"),
                lambda: drive(export_state_dict(make_plan(ckpt, ""), str(tmp_path / "no" / "x"))),
                lambda: drive(export_state_dict(make_plan(ckpt, ""), str(tmp_path),
                                                overwrite=True))):
        with pytest.raises(ExportUsageError):
            bad()
    assert check_device("cuda:1") == "cuda:1" and check_device("mps") == "mps"


def test_failed_model_verification_leaves_the_target_untouched(models, tmp_path):
    out = tmp_path / "noisy.pt2"
    out.write_bytes(b"old content")
    result = tiny_export(models, "pt2", out, source="noisy", builder="noisy", input_shape=(1, 4),
                         overwrite=True)
    assert not result["passed"] and not result["written"]
    assert "beyond the tolerance" in result["problems"][0]
    assert out.read_bytes() == b"old content" and leftovers(tmp_path) == []


def test_onnx_opset_that_was_not_written_fails(models, tmp_path):
    out = tmp_path / "tiny13.onnx"
    result = tiny_export(models, "onnx", out, opset=13)
    assert not result["passed"] and not out.exists()
    assert any("not the 13 asked for" in p for p in result["problems"]), result["problems"]
    assert leftovers(tmp_path) == []


def test_dynamic_batch(models, tmp_path):
    """Exported at batch 2 and run at batch 1 and 2; a model whose code fixes the batch size
    fails (ONNX: the exporter falls back to a static graph; .pt2: torch.export refuses)."""
    for target, options in (("onnx", {"exporter": "dynamo"}), ("pt2", {}),
                            ("torchscript", {})):
        out = tmp_path / f"tiny.{target}"
        result = tiny_export(models, target, out, dynamic_batch=True, **options)
        assert result["passed"] and result["dynamic_batch_checked"], (target, result)
        assert result["dynamic_batch_size"] == 2
    out = tmp_path / "fixed.onnx"
    fixed = tiny_export(models, "onnx", out, source="fixed", builder="fixed",
                        input_shape=(1, 4), dynamic_batch=True)
    assert not fixed["passed"] and fixed["dynamic_batch_checked"] is False
    assert any("batch dimension is fixed" in p for p in fixed["problems"]), fixed["problems"]
    assert not out.exists()
    with pytest.raises(ExportError, match="batch dimension cannot be dynamic"):
        tiny_export(models, "pt2", tmp_path / "fixed.pt2", source="fixed", builder="fixed",
                    input_shape=(1, 4), dynamic_batch=True)
    assert leftovers(tmp_path) == []


def test_onnx_external_data_is_part_of_the_output(models, tmp_path):
    from ckpt_inspector.core.errors import ExportUsageError

    out = tmp_path / "tiny.onnx"
    data = tmp_path / "tiny.onnx.data"
    data.write_bytes(b"someone's data")
    with pytest.raises(ExportUsageError, match="external data"):
        tiny_export(models, "onnx", out, exporter="dynamo")
    assert data.read_bytes() == b"someone's data" and not out.exists()
    result = tiny_export(models, "onnx", out, exporter="dynamo", overwrite=True)
    assert result["passed"] and result["files"] == ["tiny.onnx", "tiny.onnx.data"]
    assert data.read_bytes() != b"someone's data"
    from ckpt_inspector.core.ops.export.result import ExportResult

    text = ExportResult.from_json(result).text()  # what the command prints: both files
    assert "files: tiny.onnx, tiny.onnx.data" in text, text
    inline = tiny_export(models, "onnx", out, exporter="legacy", overwrite=True)
    assert inline["passed"] and inline["files"] == ["tiny.onnx"]
    assert sorted(os.listdir(tmp_path)) == ["tiny.onnx"]  # the old .data went with it


def test_onnx_without_onnxruntime_is_not_verified(models, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    out = tmp_path / "tiny.onnx"
    result = tiny_export(models, "onnx", out, exporter="legacy")
    assert result["passed"] is False and result["verified"] is False
    assert result["written"] and "not run" in result["onnxruntime"]


def test_interrupt_turned_into_import_error_is_an_interrupt(models, tmp_path, monkeypatch):
    import builtins
    import sys

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "onnxruntime":
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise ImportError("initialization failed") from None
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(KeyboardInterrupt):
        tiny_export(models, "onnx", tmp_path / "tiny.onnx", exporter="legacy")
    assert os.listdir(tmp_path) == []


def test_builder_wins_and_the_files_own_model_needs_trust(models):
    from ckpt_inspector.core.ops.export.model_source import load_model
    from ckpt_inspector.core.ops.torch_load import TrustError

    path = str(models["tiny_module"])
    built = load_model(path, ModelSource(builder="export_builders_core:tiny"))
    assert built.description.startswith("export_builders_core:tiny")
    with pytest.raises(TrustError, match="--trust"):
        load_model(path, ModelSource())
    with pytest.raises(TrustError):
        load_model(path, ModelSource(kind="pickled"))
    assert "from the file" in load_model(path, ModelSource(trust=True)).description


def test_state_dict_mismatch_keeps_the_details(models):
    from ckpt_inspector.core.errors import ExportUsageError
    from ckpt_inspector.core.ops.export.model_source import load_model

    with pytest.raises(ExportUsageError) as err:
        load_model(str(models["tiny"]), ModelSource(builder="export_builders_core:fixed"))
    assert "Missing key(s)" in str(err.value) and "Unexpected key(s)" in str(err.value)


def test_output_comparison_has_a_relative_tolerance(torch):
    from ckpt_inspector.core.ops.export.verify import compare

    big = torch.tensor([1e4, -2e4, float("nan")], dtype=torch.float64)
    assert compare(big, big + torch.tensor([0.05, -0.1, 0.0]), 1e-4, 1e-5) == (
        pytest.approx(0.1, rel=1e-3), True)
    assert compare(big, big + 0.5, 1e-4, 1e-5)[1] is False
    assert compare(torch.tensor([float("nan")]), torch.tensor([1.0]), 1e-4, 1e-5)[1] is False


def test_pt2_dynamic_batch_on_a_gpu(models, tmp_path, torch):
    """On CUDA, convolutions add a batch ≤ 65535 guard: a range is fine, a fixed size is not
    (a named Dim refused it on torch 2.11)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    result = tiny_export(models, "pt2", tmp_path / "tiny.pt2", device="cuda:0",
                         dynamic_batch=True)
    assert result["passed"] and result["dynamic_batch_checked"], result

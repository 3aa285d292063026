"""Exports: state_dict and safetensors written without torch, models verified by running."""

from __future__ import annotations

import json
import os
import warnings

import pytest

from ckpt_inspector.core import open_checkpoint
from ckpt_inspector.core.export import (
    ExportError,
    KeyRules,
    common_prefix,
    export_state_dict,
    make_plan,
    sources,
    verify_state_dict,
)
from ckpt_inspector.core.model_export import ModelSource, export_model

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

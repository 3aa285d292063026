"""Hugging Face sharded checkpoints (``core/layouts/hf_sharded``): a folder or its index read
as one checkpoint, checked against what torch and safetensors read from the same shards."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest

from ckpt_inspector.core import CheckpointError, open_checkpoint
from ckpt_inspector.core.scan import scan
from ckpt_inspector.core.tensors import to_torch
from ckpt_inspector.core.tree import key_of

from shards import marker_payload, save_sharded, state_dict


@pytest.fixture(scope="module")
def sd(torch):
    return state_dict(torch)


@pytest.fixture(scope="module", params=["safetensors", "bin"])
def sharded(request, torch, sd, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"hf-{request.param}")
    weight_map = save_sharded(torch, folder, sd, request.param)
    return folder, weight_map, request.param


def _tensors(ckpt):
    return {key_of(p): n.tensor for p, n in ckpt.tensors()}


def _reference(torch, path):
    """``{key: tensor}`` as the library that wrote a shard reads it."""
    if str(path).endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            names = f.keys()  # a safe_open handle is not iterable
            return {k: f.get_tensor(k) for k in names}
    return torch.load(path, weights_only=True)


def test_folder_and_index_read_as_one_checkpoint(sharded, torch, sd):
    folder, weight_map, ext = sharded
    index = next(folder.glob("*.index.json"))
    for opened in (folder, index):
        ckpt = open_checkpoint(opened)
        assert ckpt.format == "hf-sharded"
        infos = _tensors(ckpt)
        assert set(infos) == set(sd) == set(weight_map)
        for shard in sorted(set(weight_map.values())):
            for key, ref in _reference(torch, folder / shard).items():
                info = infos[key]
                assert info.file == shard == weight_map[key]
                assert info.dtype == str(ref.dtype).removeprefix("torch.")
                assert info.shape == tuple(ref.shape)
                assert torch.equal(to_torch(info), ref)
        files = {f["path"]: f for f in ckpt.files}
        assert files[index.name]["format"] == "hf-index"
        for shard in set(weight_map.values()):
            assert files[shard]["size"] == (folder / shard).stat().st_size
            assert files[shard]["format"] == ("safetensors" if ext == "safetensors"
                                              else "torch-zip")
        assert ckpt.metadata["config"]["model_type"] == "toy"
        assert ckpt.metadata["index metadata"]["total_size"] > 0
        assert scan(ckpt).verdict == "safe"
        assert not ckpt.warnings


def test_one_shard_alone_is_that_shard(sharded):
    folder, weight_map, _ext = sharded
    shard = sorted(set(weight_map.values()))[0]
    ckpt = open_checkpoint(folder / shard)
    assert ckpt.format in ("safetensors", "torch-zip") and not ckpt.files
    infos = _tensors(ckpt)
    assert set(infos) == {k for k, v in weight_map.items() if v == shard}
    assert all(t.file is None for t in infos.values())


def test_shards_without_an_index_are_grouped(torch, sd, tmp_path):
    save_sharded(torch, tmp_path, sd, "safetensors", prefix="adapter_model", index=False)
    ckpt = open_checkpoint(tmp_path)
    assert ckpt.format == "hf-sharded" and set(_tensors(ckpt)) == set(sd)
    assert [f["path"] for f in ckpt.files] == [
        f"adapter_model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]


def test_a_model_saved_unsharded_is_its_folder(torch, sd, tmp_path):
    """``model.safetensors`` beside ``config.json`` (what save_pretrained writes for a small
    model); with a ``pytorch_model.bin`` too, the safetensors file is read, as transformers
    does, and the other is named."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text('{"model_type": "toy"}')
    torch.save(sd, tmp_path / "pytorch_model.bin")
    ckpt = open_checkpoint(tmp_path)
    assert ckpt.format == "hf-sharded" and set(_tensors(ckpt)) == set(sd)
    assert [f["path"] for f in ckpt.files] == ["model.safetensors"]
    assert all(t.file == "model.safetensors" for t in _tensors(ckpt).values())
    assert any("pytorch_model.bin" in w for w in ckpt.warnings)
    assert ckpt.metadata["config"]["model_type"] == "toy"
    assert scan(ckpt).verdict == "safe"


def test_other_prefixes_and_the_preferred_index(torch, sd, tmp_path):
    save_sharded(torch, tmp_path, sd, "bin", shards=2)
    save_sharded(torch, tmp_path, sd, "safetensors", shards=2,
                 prefix="diffusion_pytorch_model")
    ckpt = open_checkpoint(tmp_path)  # safetensors first, as diffusers loads it
    assert ckpt.metadata["index"] == "diffusion_pytorch_model.safetensors.index.json"
    assert any("pytorch_model.bin.index.json" in w for w in ckpt.warnings)
    other = open_checkpoint(tmp_path / "pytorch_model.bin.index.json")
    assert {f["format"] for f in other.files[1:]} == {"torch-zip"}


def test_a_malicious_bin_shard_makes_the_folder_dangerous(torch, sd, tmp_path):
    weight_map = save_sharded(torch, tmp_path, sd, "bin", shards=2)
    marker = tmp_path / "PWNED-marker"
    shard = tmp_path / sorted(set(weight_map.values()))[-1]
    marker_payload(torch, shard, marker)
    report = scan(open_checkpoint(tmp_path))
    assert report.verdict == "dangerous"
    bad = [f for f in report.findings if f.severity == "dangerous"]
    assert bad and all(f.file == shard.name for f in bad)
    assert any(f.code == "index-mismatch" and "model.extra" in f.message
               for f in report.findings)
    assert not marker.exists()


def test_a_payload_in_the_bin_weights_not_shown_still_counts(torch, sd, tmp_path):
    """Was (red team): beside model.safetensors, a pytorch_model.bin was only named, and
    the folder 'safe', while transformers torch.loads the .bin with use_safetensors=False
    or without the safetensors package."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "model.safetensors")
    marker = tmp_path / "PWNED-marker"
    evil = tmp_path / "pytorch_model.bin"
    torch.save(sd, evil)
    marker_payload(torch, evil, marker)
    ckpt = open_checkpoint(tmp_path)
    assert [f["path"] for f in ckpt.files] == ["model.safetensors"]  # still what is shown
    report = scan(ckpt)
    assert report.verdict == "dangerous"
    assert {f.file for f in report.findings if f.severity == "dangerous"} == {evil.name}
    assert any("pytorch_model.bin" in w and "verdict" in w for w in ckpt.warnings)
    assert not marker.exists()


def test_a_missing_shard_leaves_the_others_readable(torch, sd, tmp_path):
    weight_map = save_sharded(torch, tmp_path, sd, "safetensors")
    gone = sorted(set(weight_map.values()))[1]
    (tmp_path / gone).unlink()
    ckpt = open_checkpoint(tmp_path)
    infos = _tensors(ckpt)
    assert set(infos) == set(sd)
    for key, shard in weight_map.items():
        assert (infos[key].problem is not None) == (shard == gone), key
        assert infos[key].file == shard
    assert any(gone in w and "missing" in w for w in ckpt.warnings)
    assert scan(ckpt).verdict == "safe"


@pytest.mark.parametrize("ext", ["safetensors", "bin"])
def test_a_truncated_shard_is_damaged_and_named(torch, sd, tmp_path, ext):
    weight_map = save_sharded(torch, tmp_path, sd, ext)
    cut = sorted(set(weight_map.values()))[0]
    data = (tmp_path / cut).read_bytes()
    (tmp_path / cut).write_bytes(data[:len(data) // 2])
    ckpt = open_checkpoint(tmp_path)
    infos = _tensors(ckpt)
    assert {k for k, t in infos.items() if t.problem} == {
        k for k, v in weight_map.items() if v == cut}
    assert any(w.startswith(cut) for w in ckpt.warnings)
    report = scan(ckpt)
    assert any(f.file == cut and f.code == "unreadable-file" for f in report.findings)
    # what is not read is never vouched for: a .bin torch would run, and (found by the
    # fuzz round: a folder was 'safe' and 'readable') a safetensors shard too
    assert report.verdict == "needs-trust", report.findings


def test_index_and_shard_disagree(torch, sd, tmp_path):
    weight_map = save_sharded(torch, tmp_path, sd, "safetensors", shards=2)
    index = tmp_path / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    promised = next(iter(weight_map))
    data["weight_map"]["model.ghost"] = weight_map[promised]  # promised, not there
    del data["weight_map"][promised]  # there, not promised
    index.write_text(json.dumps(data))
    ckpt = open_checkpoint(tmp_path)
    infos = _tensors(ckpt)
    assert infos["model.ghost"].problem and infos[promised].problem is None
    messages = [f.message for f in scan(ckpt).findings if f.code == "index-mismatch"]
    assert any("model.ghost" in m for m in messages)
    assert any(promised in m for m in messages)


def test_a_shard_outside_the_folder_is_not_read(torch, sd, tmp_path):
    save_sharded(torch, tmp_path / "m", sd, "safetensors", shards=2)
    index = tmp_path / "m" / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    shutil.copy(tmp_path / "m" / "model-00001-of-00002.safetensors", tmp_path / "out.st")
    data["weight_map"]["model.stolen"] = "../out.st"
    index.write_text(json.dumps(data))
    ckpt = open_checkpoint(index)
    assert _tensors(ckpt)["model.stolen"].problem
    assert scan(ckpt).verdict == "dangerous"


def test_a_folder_in_no_layout_is_refused_with_its_files(tensors_file, tmp_path):
    shutil.copy(tensors_file[0], tmp_path / "a.pt")
    (tmp_path / "b.safetensors").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"holds 1 checkpoint file.*a\.pt \(torch-zip\)"):
        open_checkpoint(tmp_path)
    (tmp_path / "a.pt").unlink()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        open_checkpoint(tmp_path)


def test_broken_index_is_one_clear_error(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        open_checkpoint(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": 3}')
    with pytest.raises(CheckpointError, match="no weight_map"):
        open_checkpoint(tmp_path / "model.safetensors.index.json")


def test_single_files_gain_no_layout_fields(tensors_file):
    ckpt = open_checkpoint(tensors_file[0])
    assert not ckpt.files
    assert all(n.tensor.file is None for _p, n in ckpt.tensors())
    assert all(f.file is None for f in scan(ckpt).findings)


def test_values_match_the_state_dict(sharded, torch, sd):
    ckpt = open_checkpoint(sharded[0])
    for key, info in _tensors(ckpt).items():
        got = to_torch(info)
        assert got.dtype == sd[key].dtype
        assert np.array_equal(got.float().numpy(), sd[key].float().numpy()), key


def test_a_payload_in_a_trainer_checkpoints_optimizer_counts(torch, sd, tmp_path):
    """A Trainer checkpoint folder: the model, and optimizer.pt, scheduler.pt and
    rng_state.pth that resuming torch.loads. A payload in optimizer.pt left it 'safe'."""
    from safetensors.torch import save_file

    from support import Payload

    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text('{"model_type": "toy"}')
    torch.save({"last_epoch": 3}, tmp_path / "scheduler.pt")
    marker = tmp_path / "PWNED-marker"
    torch.save({"state": {}, "evil": Payload(f"touch {marker}")}, tmp_path / "optimizer.pt")
    ckpt = open_checkpoint(tmp_path)
    assert [f["path"] for f in ckpt.files] == ["model.safetensors"]
    report = scan(ckpt)
    assert report.verdict == "dangerous"
    assert {f.file for f in report.findings if f.severity == "dangerous"} == {"optimizer.pt"}
    assert any("optimizer.pt" in w and "verdict" in w for w in ckpt.warnings)
    assert not marker.exists()


def test_the_torch_load_answer_counts_the_files_read_for_the_verdict(torch, sd, tmp_path):
    """A Trainer folder whose scheduler.pt needs an import allowed: the answer said
    "torch.load works on each of its 1 files" under a needs-trust verdict, as if only the
    shown model counted. It answers for every file it read, and says which are not shown."""
    from safetensors.torch import save_file

    from ckpt_inspector.core.torch_load_prediction import predict

    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text('{"model_type": "toy"}')
    torch.save({"state": {}, "param_groups": []}, tmp_path / "optimizer.pt")
    torch.save({"args": argparse.Namespace(lr=0.1)}, tmp_path / "scheduler.pt")
    ckpt = open_checkpoint(tmp_path)
    assert [f["path"] for f in ckpt.verdict_files] == ["optimizer.pt", "scheduler.pt"]
    assert all(f["format"] == "torch-zip" and f["size"] > 0 for f in ckpt.verdict_files)
    report = scan(ckpt)
    pred = predict(ckpt, report)
    assert report.verdict == "needs-trust" and not pred.weights_only
    answers = {f["path"]: f for f in pred.files}
    assert set(answers) == {"model.safetensors", "optimizer.pt", "scheduler.pt"}
    assert answers["scheduler.pt"]["blocked_by"] == ["argparse.Namespace"]
    assert answers["scheduler.pt"]["shown"] is False and "shown" not in answers[
        "model.safetensors"]
    assert pred.headline().startswith("torch.load fails on 1 of its 3 files")
    assert "argparse.Namespace" in (pred.fix or "")
    assert "2 of them not shown" in (pred.note or "")


def test_an_unreadable_file_read_for_the_verdict_is_answered_too(torch, sd, tmp_path):
    from safetensors.torch import save_file

    from ckpt_inspector.core.torch_load_prediction import predict

    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text('{"model_type": "toy"}')
    torch.save({"state": {}}, tmp_path / "optimizer.pt")
    data = (tmp_path / "optimizer.pt").read_bytes()
    (tmp_path / "optimizer.pt").write_bytes(data[: len(data) // 2])
    ckpt = open_checkpoint(tmp_path)
    [entry] = ckpt.verdict_files
    assert entry["path"] == "optimizer.pt" and entry["problem"]
    assert not any("shown damaged" in w for w in ckpt.warnings)  # it is not shown
    report = scan(ckpt)
    assert report.verdict != "safe"
    pred = predict(ckpt, report)
    assert not pred.weights_only
    assert {f["path"]: f["weights_only"] for f in pred.files} == {
        "model.safetensors": True, "optimizer.pt": False}


def test_a_trainer_checkpoint_saved_with_deepspeed_reads_its_subfolder(torch, sd, tmp_path):
    """Found by review: Trainer under DeepSpeed keeps the model states in global_step3/,
    which a resume torch.loads; only the folder's own files were read."""
    from safetensors.torch import save_file

    from support import Payload

    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "model.safetensors")
    (tmp_path / "latest").write_text("global_step3")
    (tmp_path / "global_step3").mkdir()
    marker = tmp_path / "PWNED-marker"
    torch.save({"module": {}, "x": Payload(f"touch {marker}")},
               tmp_path / "global_step3" / "mp_rank_00_model_states.pt")
    report = scan(open_checkpoint(tmp_path))
    assert report.verdict == "dangerous"
    assert {f.file for f in report.findings if f.severity == "dangerous"} == {
        "global_step3/mp_rank_00_model_states.pt"}
    assert not marker.exists()


def test_training_args_bin_alone_does_not_need_trust(torch, sd, tmp_path):
    """training_args.bin is a pickled TrainingArguments written for reference: no loader
    loads it, and Hub folders ship it (it made every such folder needs-trust)."""
    from safetensors.torch import save_file

    from support import Reduce

    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "model.safetensors")
    torch.save(Reduce(argparse.Namespace), tmp_path / "training_args.bin")
    assert scan(open_checkpoint(tmp_path)).verdict == "safe"

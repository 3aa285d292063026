"""Code a checkpoint folder carries outside its weights (found by a red-team review): a
Hugging Face folder's ``auto_map`` modules, which from_pretrained(trust_remote_code=True)
imports; Python files beside the weights; and a GGUF split this reader cannot read,
whose chat template is then not checked. None of these may leave the folder "safe"."""

from __future__ import annotations

import json

import numpy as np
import pytest

from support import scan_file


def _hf_folder(tmp_path, marker):
    from safetensors.numpy import save_file

    folder = tmp_path / "custom"
    folder.mkdir()
    save_file({"w": np.zeros(3, dtype=np.float32)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig",
                     "AutoModel": "modeling_evil.EvilModel"}}))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}}))
    for name in ("configuration_evil.py", "modeling_evil.py", "tokenization_evil.py"):
        (folder / name).write_text(f"import os\nos.system('touch {marker}')\n")
    return folder


def test_auto_map_modules_need_trust(tmp_path, marker):
    folder = _hf_folder(tmp_path, marker)
    _, report, error = scan_file(folder)
    assert error is None
    assert report.verdict == "needs-trust"
    code = sorted(f.message.split(" import ")[1].split(":")[0] for f in report.findings
                  if f.code == "remote-code")
    assert code == ["configuration_evil.py", "modeling_evil.py", "tokenization_evil.py"]


def test_a_module_from_another_repository_is_named(tmp_path, marker):
    folder = _hf_folder(tmp_path, marker)
    (folder / "config.json").write_text(json.dumps({
        "auto_map": {"AutoModel": "someone/evil--modeling_evil.EvilModel"}}))
    _, report, _ = scan_file(folder)
    assert report.verdict == "needs-trust"
    assert any("Hub repository someone/evil" in f.message for f in report.findings)


def test_loose_python_files_are_named(tmp_path, marker):
    folder = _hf_folder(tmp_path, marker)
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer_config.json").unlink()
    _, report, _ = scan_file(folder)
    assert report.verdict == "safe"  # loading the weights imports none of them
    assert {f.file for f in report.findings if f.code == "code-file"} == {
        "configuration_evil.py", "modeling_evil.py", "tokenization_evil.py"}


def test_an_unreadable_gguf_split_is_never_safe(tmp_path):
    gguf = pytest.importorskip("gguf")
    folder = tmp_path / "split"
    folder.mkdir()
    for k, pad in ((1, 66_000), (2, 0)):
        w = gguf.GGUFWriter(str(folder / f"model-0000{k}-of-00002.gguf"), "llama")
        w.add_uint16("split.no", k - 1)
        w.add_uint16("split.count", 2)
        w.add_int32("split.tensors.count", 2)
        for i in range(pad):  # past the key/values this reader reads
            w.add_uint8(f"pad.k{i}", 0)
        w.add_tensor(f"t{k}", np.zeros(4, dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    _, report, _ = scan_file(folder)
    assert report.verdict == "needs-trust"
    assert any(f.code == "unreadable-file" for f in report.findings)


def test_a_rank_metadata_file_counts_for_the_verdict(torch, tmp_path, marker):
    """torch.distributed.checkpoint.load unpickles ``__0.metadata`` when ``.metadata``
    fails to load (found by a red-team review: the folder was "safe")."""
    import pickle

    import torch.distributed.checkpoint as dcp

    from support import Payload

    folder = tmp_path / "dcp"
    dcp.save({"w": torch.ones(3)}, checkpoint_id=str(folder))
    _, report, _ = scan_file(folder)
    assert report.verdict == "safe"
    (folder / "__0.metadata").write_bytes(pickle.dumps(Payload(f"touch {marker}")))
    _, report, _ = scan_file(folder)
    assert report.verdict == "dangerous"
    assert "posix.system" in report.flagged_names()


def _dcp_with(torch, folder, marker, reducer):
    """A DCP folder holding a payload in a bytes entry, its .metadata pickled again with
    ``reducer`` deciding how each object is written."""
    import io
    import pickle

    import torch.distributed.checkpoint as dcp

    from support import Payload

    dcp.save({"w": torch.arange(6.0).reshape(2, 3), "obj": Payload(f"touch {marker}")},
             checkpoint_id=str(folder))
    md = pickle.loads((folder / ".metadata").read_bytes())  # our own file: trusted

    class Pickler(pickle.Pickler):
        def reducer_override(self, obj):
            return reducer(obj)

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(md)
    (folder / ".metadata").write_bytes(buf.getvalue())


def test_dcp_storage_entries_built_by_calling_the_class(torch, tmp_path, marker):
    """MetadataIndex and _StorageInfo made by calling the dataclass (REDUCE) are the same
    to DCP; the reader dropped them, never read the bytes item and said "safe"."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import MetadataIndex

    def by_call(obj):
        if type(obj) is MetadataIndex:
            return MetadataIndex, (obj.fqn, None if obj.offset is None else tuple(obj.offset))
        if type(obj) is _StorageInfo:
            return _StorageInfo, (obj.relative_path, obj.offset, obj.length,
                                  obj.transform_descriptors)
        return NotImplemented

    folder = tmp_path / "dcp"
    _dcp_with(torch, folder, marker, by_call)
    _, report, _ = scan_file(folder)
    assert report.verdict == "dangerous"
    assert "posix.system" in report.flagged_names()


def test_dcp_storage_entries_it_cannot_read_are_never_safe(torch, tmp_path, marker):
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    def odd(obj):
        if type(obj) is _StorageInfo:
            return tuple, ((obj.relative_path, obj.offset, obj.length),)
        return NotImplemented

    folder = tmp_path / "dcp"
    _dcp_with(torch, folder, marker, odd)
    _, report, _ = scan_file(folder)
    assert report.verdict != "safe"
    assert any(f.code == "dcp-unread" for f in report.findings)


def _hf_model(torch, folder):
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    save_file({"w": torch.zeros(2, 2)}, str(folder / "model.safetensors"))


def test_a_trainer_fsdp_folder_scans_its_dcp_subfolder(torch, tmp_path, marker):
    """A Trainer under FSDP resumes from pytorch_model_fsdp_0/ with DCP, which unpickles its
    .metadata: the Hugging Face layout read the folder and never looked there ("safe")."""
    import pickle

    import torch.distributed.checkpoint as dcp

    from support import Payload

    folder = tmp_path / "checkpoint-10"
    _hf_model(torch, folder)
    dcp.save({"w": torch.zeros(2, 2)}, checkpoint_id=str(folder / "pytorch_model_fsdp_0"))
    _, report, _ = scan_file(folder)
    assert report.verdict == "safe"
    (folder / "pytorch_model_fsdp_0" / ".metadata").write_bytes(
        pickle.dumps(Payload(f"touch {marker}")))
    _, report, _ = scan_file(folder)
    assert report.verdict == "dangerous"
    assert "posix.system" in report.flagged_names()


@pytest.mark.parametrize("where", ["deep", "outside"])
def test_a_trainer_deepspeed_folder_follows_latest(torch, tmp_path, marker, where):
    """A Trainer under DeepSpeed resumes with load_checkpoint, which joins ``latest`` to the
    folder unchecked: a tag three folders deep, or outside, was never read ("safe")."""
    from support import Payload

    folder = tmp_path / "checkpoint-10"
    _hf_model(torch, folder)
    (folder / "global_step1").mkdir()
    torch.save({"module": {"w": torch.zeros(2, 2)}},
               folder / "global_step1" / "mp_rank_00_model_states.pt")
    evil = folder / "a" / "b" / "global_step9" if where == "deep" else \
        tmp_path / "elsewhere" / "global_step9"
    evil.mkdir(parents=True)
    torch.save({"module": {}, "x": Payload(f"touch {marker}")},
               evil / "mp_rank_00_model_states.pt")
    (folder / "latest").write_text("a/b/global_step9" if where == "deep" else str(evil))
    _, report, _ = scan_file(folder)
    assert report.verdict == "dangerous"
    if where == "deep":
        assert "posix.system" in report.flagged_names()
    else:
        assert any(f.code == "path-outside" for f in report.findings)


def test_a_universal_checkpoint_counts_for_the_verdict(torch, tmp_path, marker):
    """DeepSpeed's universal checkpoint (``latest_universal``, ``zero/<param>/fp32.pt``,
    ``zero/optimizer_state.pt``), loaded with load_universal: never read ("safe")."""
    from support import Payload

    folder = tmp_path / "ds"
    (folder / "global_step1").mkdir(parents=True)
    torch.save({"module": {"w": torch.zeros(2)}},
               folder / "global_step1" / "mp_rank_00_model_states.pt")
    (folder / "latest").write_text("global_step1")
    uni = folder / "global_step1_universal"
    (uni / "zero" / "w").mkdir(parents=True)
    torch.save({"module": {"w": torch.zeros(2)}}, uni / "mp_rank_00_model_states.pt")
    torch.save({"param": torch.zeros(2), "x": Payload(f"touch {marker}")},
               uni / "zero" / "w" / "fp32.pt")
    (folder / "latest_universal").write_text("global_step1_universal")
    for path in (folder, uni):
        _, report, _ = scan_file(path)
        assert report.verdict == "dangerous", path
        assert "posix.system" in report.flagged_names()


def _aliased_dcp(torch, folder, obj):
    """A DCP folder whose bytes entry ``obj`` is named by 30 more entries of .metadata."""
    import pickle

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import MetadataIndex

    dcp.save({"w": torch.zeros(2), "obj": obj}, checkpoint_id=str(folder))
    md = pickle.loads((folder / ".metadata").read_bytes())  # our own file: trusted
    key = next(k for k in md.storage_data if k.fqn.startswith("obj"))
    for i in range(30):
        md.state_dict_metadata[f"obj{i}"] = md.state_dict_metadata[key.fqn]
        md.storage_data[MetadataIndex(f"obj{i}")] = md.storage_data[key]
    (folder / ".metadata").write_bytes(pickle.dumps(md))
    return folder


def test_one_dcp_item_named_by_many_entries_is_read_once(torch, tmp_path):
    """A .metadata pointing 30 entries at one bytes item made the reader interpret it 30
    times (37 s and 4 GB for 50 entries of a 10 MB item): now once."""
    folder = _aliased_dcp(torch, tmp_path / "dcp", {"a": [1, 2, 3]})
    ckpt, report, _ = scan_file(folder)
    items = [r for r in ckpt.pickles if r.file and r.file.endswith(".distcp")]
    assert len(items) == 2  # w's and obj's, each once
    assert {str(p[0]) for p, _ in ckpt.tensors()} >= {"w"}
    assert report.verdict in ("safe", "needs-trust")


def test_one_shard_spelt_many_ways_is_read_once(torch, tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    torch.save({f"k{i}": torch.zeros(2) for i in range(20)}, folder / "big.bin")
    weight_map = {f"k{i}": "./" * i + "big.bin" for i in range(20)}
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    ckpt, report, _ = scan_file(folder)
    assert report.verdict == "safe"
    assert [f["path"] for f in ckpt.files if f["path"].endswith(".bin")] == ["big.bin"]
    assert len(ckpt.pickles) == 1
    assert len(list(ckpt.tensors())) == 20


def test_shards_of_a_second_index_count_whatever_their_names(torch, tmp_path, marker):
    """A safetensors model whose folder also has a pytorch_model.bin.index.json naming a
    ``.dat`` shard (from_pretrained(use_safetensors=False) torch.loads it): "safe"."""
    from safetensors.torch import save_file

    from support import Payload

    folder = tmp_path / "hf"
    folder.mkdir()
    save_file({"w": torch.zeros(2)}, str(folder / "model-00001-of-00001.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"w": "model-00001-of-00001.safetensors"}}))
    torch.save({"w": torch.zeros(2), "x": Payload(f"touch {marker}")},
               folder / "pytorch_model-00001-of-00001.dat")
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"w": "pytorch_model-00001-of-00001.dat"}}))
    _, report, _ = scan_file(folder)
    assert report.verdict == "dangerous"
    assert "posix.system" in report.flagged_names()


@pytest.mark.usefixtures("loopback_only")  # tests/conftest.py
def test_one_dcp_item_named_by_many_entries_is_fetched_once_over_http(torch, tmp_path):
    from rangeserver import RangeServer

    folder = _aliased_dcp(torch, tmp_path / "dcp", {"a": list(range(50_000))})
    local, _, _ = scan_file(folder)
    with RangeServer(folder) as served:
        ckpt, _, _ = scan_file(served.url(".metadata"))
        sent = sum(r.sent for r in served.requests())
    assert len([r for r in ckpt.pickles if r.file and r.file.endswith(".distcp")]) == 2
    assert sent < 3 * (folder / "__0_0.distcp").stat().st_size + 10_000
    assert len(list(ckpt.tensors())) == len(list(local.tensors()))


def test_other_code_transformers_imports_needs_trust(tmp_path, marker):
    """A tokenizer's legacy auto_map list, config.json's custom_pipelines and
    custom_generate/generate.py are imported with trust_remote_code too: they were "safe"."""
    folder = _hf_folder(tmp_path, marker)
    (folder / "config.json").write_text(json.dumps({"custom_pipelines": {
        "evil-task": {"impl": "pipeline_evil.EvilPipeline", "pt": ["AutoModel"]}}}))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"auto_map": ["tokenization_evil.EvilTokenizer", None]}))
    (folder / "custom_generate").mkdir()
    code = f"import os\nos.system('touch {marker}')\n"
    (folder / "custom_generate" / "generate.py").write_text(code)
    _, report, _ = scan_file(folder)
    assert report.verdict == "needs-trust"
    said = " ".join(f.message for f in report.findings if f.code == "remote-code")
    for name in ("pipeline_evil.py", "tokenization_evil.py", "custom_generate/generate.py"):
        assert name in said, name

"""One file of a checkpoint made of several: which whole it belongs to (decided from names)."""

from __future__ import annotations

import json

from ckpt_inspector.core import layouts
from ckpt_inspector.core.layouts.siblings import whole_model_for

from shards import save_sharded, state_dict


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def test_a_shard_beside_its_index_belongs_to_its_folder(torch, tmp_path):
    folder = tmp_path / "model"
    weight_map = save_sharded(torch, folder, state_dict(torch), "safetensors", shards=3)
    shard = sorted(set(weight_map.values()))[1]
    whole = whole_model_for(folder / shard)
    assert whole is not None
    assert (whole.path, whole.folder) == (str(folder), str(folder))
    assert whole.index == "model.safetensors.index.json"
    assert (whole.part, whole.count) == (2, 3)
    assert whole.describe() == "shard 2 of 3 of a sharded model"
    assert layouts.open_checkpoint(whole.path).format == "hf-sharded"
    # the index itself, config.json and a file complete by itself are no part of anything
    for name in ("model.safetensors.index.json", "config.json"):
        assert whole_model_for(folder / name) is None


def test_shards_without_an_index_and_odd_names(tmp_path):
    folder = _touch(tmp_path / "m", "model-00001-of-00002.bin", "model-00002-of-00002.bin")
    whole = whole_model_for(folder / "model-00001-of-00002.bin")
    assert whole is not None and whole.path == str(folder) and whole.index is None
    alone = _touch(tmp_path / "one", "model-00001-of-00001.safetensors")
    assert whole_model_for(alone / "model-00001-of-00001.safetensors") is None
    bad = _touch(tmp_path / "bad", "model-00007-of-00002.safetensors")
    assert whole_model_for(bad / "model-00007-of-00002.safetensors") is None
    assert whole_model_for(tmp_path / "missing-00001-of-00002.safetensors") is None
    assert whole_model_for(tmp_path) is None  # a folder is not a part


def test_the_second_group_of_a_folder_opens_by_its_own_index(tmp_path):
    """The folder opens what transformers reads first (safetensors): a .bin shard's whole
    model is its own index."""
    folder = _touch(tmp_path / "m", "model-00001-of-00002.safetensors",
                    "model-00002-of-00002.safetensors", "pytorch_model-00001-of-00002.bin",
                    "pytorch_model-00002-of-00002.bin")
    for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        (folder / name).write_text(json.dumps({"weight_map": {}}))
    st = whole_model_for(folder / "model-00002-of-00002.safetensors")
    assert st is not None and st.path == str(folder)
    pt = whole_model_for(folder / "pytorch_model-00001-of-00002.bin")
    assert pt is not None and pt.path == str(folder / "pytorch_model.bin.index.json")
    assert pt.index == "pytorch_model.bin.index.json"
    # without its own index, a group the folder does not open has no whole to offer
    (folder / "pytorch_model.bin.index.json").unlink()
    assert whole_model_for(folder / "pytorch_model-00001-of-00002.bin") is None


def test_a_distcp_item_file_belongs_to_its_folder(tmp_path):
    folder = _touch(tmp_path / "dcp", ".metadata", "__0_0.distcp", "__1_0.distcp",
                    "__10_0.distcp")
    whole = whole_model_for(folder / "__10_0.distcp")
    assert whole is not None and whole.path == str(folder)
    assert whole.describe() == "file 3 of 3 of a torch.distributed checkpoint"
    (folder / ".metadata").unlink()
    assert whole_model_for(folder / "__0_0.distcp") is None


def test_a_gguf_split_belongs_to_its_folder_when_that_opens_its_set(tmp_path):
    folder = _touch(tmp_path / "g", "llama-00001-of-00003.gguf", "llama-00002-of-00003.gguf",
                    "llama-00003-of-00003.gguf")
    whole = whole_model_for(folder / "llama-00002-of-00003.gguf")
    assert whole is not None and whole.path == str(folder)
    assert whole.describe() == "split 2 of 3 of a GGUF model"
    # a smaller set beside it: the folder opens the other one, so nothing is offered
    _touch(folder, "tiny-00001-of-00002.gguf")
    assert whole_model_for(folder / "tiny-00001-of-00002.gguf") is None
    assert whole_model_for(folder / "llama-00003-of-00003.gguf") is not None


def test_a_deepspeed_rank_file_belongs_to_its_tag_folder(tmp_path):
    tag = _touch(tmp_path / "ckpt" / "global_step10", "mp_rank_00_model_states.pt",
                 "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                 "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    (tmp_path / "ckpt" / "latest").write_text("global_step10")
    whole = whole_model_for(tag / "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    assert whole is not None and whole.path == str(tag)
    assert whole.describe() == "file 3 of 3 of a DeepSpeed checkpoint"

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

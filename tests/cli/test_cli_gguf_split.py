"""``ckpt-inspector`` on a GGUF model split in several files (gguf-split): the folder is one
model, each tensor names its split; a missing split is named, never a traceback; the split
model compares identical to the same model in one file."""

from __future__ import annotations

import json

import pytest

from gguf_files import SPLIT_NAMES, write_gguf_split
from support import run_cli

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory):
    return write_gguf_split(tmp_path_factory.mktemp("gguf-split") / "model")


def test_info_json_of_the_folder(folder):
    proc = run_cli("info", "--json", str(folder))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["format"] == "gguf" and info["verdict"] == "safe"
    assert [f["path"] for f in info["files"]] == SPLIT_NAMES
    where = {t.name: name for name in SPLIT_NAMES
             for t in gguf.GGUFReader(str(folder / name)).tensors}
    assert {t["key"]: t["file"] for t in info["tensors"]} == where
    assert info["metadata"]["general.name"] == "tiny-split"


def test_a_missing_split_is_named(folder, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in SPLIT_NAMES[:2]:
        (partial / name).write_bytes((folder / name).read_bytes())
    proc = run_cli("info", "--json", str(partial))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    info = json.loads(proc.stdout)
    assert any(SPLIT_NAMES[2] in w and "1 of the model's 5 tensors" in w
               for w in info["warnings"]), info["warnings"]
    assert "damaged" in proc.stderr


def test_split_and_single_file_are_identical(folder, tmp_path):
    single = write_gguf_split(tmp_path / "one", split=False)
    proc = run_cli("diff", str(folder), str(single))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "IDENTICAL" in proc.stdout

"""torch.distributed.checkpoint folders (``core/layouts/dcp``): ``.metadata`` interpreted,
never unpickled; each entry read from its byte range of a ``.distcp`` file; checked against
torch's own consolidation (``dcp_to_torch_save``) of the same folder."""

from __future__ import annotations

import pickle
import socket

import dcp_files
import numpy as np
import pytest

from ckpt_inspector.core import open_checkpoint
from ckpt_inspector.core.scan import scan
from ckpt_inspector.core.summary import value_records
from ckpt_inspector.core.tensors import to_torch
from ckpt_inspector.core.tree import key_of


@pytest.fixture(scope="module")
def one_rank(torch, tmp_path_factory):
    root = tmp_path_factory.mktemp("dcp")
    folder = dcp_files.save(torch, root / "ckpt", dcp_files.state_dict(torch))
    return folder, dcp_files.consolidated(torch, folder, root / "consolidated.pt")


@pytest.fixture(scope="module")
def two_ranks(torch, tmp_path_factory):
    root = tmp_path_factory.mktemp("dcp2")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dcp_files.save_two_ranks(root / "ckpt", port)
    return root / "ckpt", dcp_files.consolidated(torch, root / "ckpt", root / "all.pt")


def _tensors(ckpt):
    return {key_of(p): n.tensor for p, n in ckpt.tensors()}


def _check_against(torch, ckpt, reference):
    infos = _tensors(ckpt)
    expected = {k: v for k, v in reference.items() if isinstance(v, torch.Tensor)}
    assert set(infos) == set(expected)
    for key, ref in expected.items():
        info = infos[key]
        assert info.problem is None, (key, info.problem)
        assert info.dtype == str(ref.dtype).removeprefix("torch.")
        assert info.shape == tuple(ref.shape)
        assert torch.equal(to_torch(info), ref), key
    return infos


def test_one_rank_matches_torch_consolidation(one_rank, torch):
    folder, reference = one_rank
    for opened in (folder, folder / ".metadata"):
        ckpt = open_checkpoint(opened)
        assert ckpt.format == "dcp"
        infos = _check_against(torch, ckpt, reference)
        assert "model.0.weight" in infos and "optim.state.0.exp_avg_sq" in infos
        assert all(i.file == "__0_0.distcp" and i.pieces is None for i in infos.values())
        values = {r["key"]: r for r in value_records(ckpt)}
        assert values["step"]["value"] == 7 == reference["step"]
        assert "optim.param_groups.0.lr" in values
        files = {f["path"]: f for f in ckpt.files}
        assert set(files) == {".metadata", "__0_0.distcp"}
        assert files[".metadata"]["size"] == (folder / ".metadata").stat().st_size
        report = scan(ckpt)
        assert report.verdict == "safe", [f.message for f in report.findings]


def test_two_ranks_row_sharded_are_one_tensor_each(two_ranks, torch):
    folder, reference = two_ranks
    ckpt = open_checkpoint(folder)
    infos = _check_against(torch, ckpt, reference)
    w = infos["model.w"]
    assert w.shape == (7, 5)
    assert w.pieces == [{"file": "__0_0.distcp", "offsets": [0, 0], "shape": [4, 5]},
                        {"file": "__1_0.distcp", "offsets": [4, 0], "shape": [3, 5]}]
    assert infos["model.b"].dtype == "bfloat16" and len(infos["model.b"].pieces) == 2
    assert np.array_equal(np.frombuffer(w.storage.source.buffer(), np.float32),
                          np.arange(35, dtype=np.float32))
    assert infos["model.replicated"].pieces is None
    assert scan(ckpt).verdict == "safe"


def test_dcp_classes_alone_do_not_need_trust(one_rank):
    report = scan(open_checkpoint(one_rank[0]))
    assert not [f for f in report.findings if f.severity != "info"]
    assert any(n.startswith("torch.distributed.checkpoint.metadata.") for n in report.globals)


def test_dcp_classes_are_known_only_in_dcp_metadata(torch, tmp_path):
    """The same records in a plain torch.save file are classes torch.load(weights_only=True)
    refuses: needs-trust there."""
    import pathlib

    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

    path = tmp_path / "records.pt"
    torch.save({"where": pathlib.PurePosixPath("/ckpt"),
                "chunk": ChunkStorageMetadata(torch.Size([0]), torch.Size([2]))}, path)
    report = scan(open_checkpoint(path))
    assert report.verdict == "needs-trust"
    assert {"pathlib.PurePosixPath",
            "torch.distributed.checkpoint.metadata.ChunkStorageMetadata"} <= \
        {f.name for f in report.findings}


def test_payload_in_metadata_is_dangerous_and_never_runs(one_rank, torch, tmp_path):
    import shutil

    from torch.distributed.checkpoint import FileSystemReader

    from support import Payload

    folder = tmp_path / "evil"
    shutil.copytree(one_rank[0], folder)
    marker = tmp_path / "marker"
    meta = FileSystemReader(str(folder)).read_metadata()  # our own file: trusted here
    meta.planner_data = {"x": Payload(f"touch {marker}")}
    (folder / ".metadata").write_bytes(pickle.dumps(meta))
    ckpt = open_checkpoint(folder)
    report = scan(ckpt)
    assert report.verdict == "dangerous"
    assert any(f.file == ".metadata" and f.severity == "dangerous" for f in report.findings)
    assert len(_tensors(ckpt)) == len([v for v in one_rank[1].values()
                                       if isinstance(v, torch.Tensor)])
    assert not marker.exists()


def test_missing_distcp_marks_its_entries_damaged(one_rank, tmp_path):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(one_rank[0], folder)
    data = folder / "__0_0.distcp"
    data.write_bytes(data.read_bytes()[:100])
    ckpt = open_checkpoint(folder)
    infos = _tensors(ckpt)
    assert infos and all(i.problem for i in infos.values())
    (folder / "__0_0.distcp").unlink()
    (folder / "other.distcp").write_bytes(b"")
    ckpt = open_checkpoint(folder)
    assert any("__0_0.distcp is missing" in w for w in ckpt.warnings)
    assert all(i.problem for i in _tensors(ckpt).values())


def test_payload_in_a_bytes_entry_is_dangerous_and_never_runs(torch, tmp_path):
    """DCP loads bytes entries with torch.load(weights_only=False): their pickles count."""
    from support import Payload

    marker = tmp_path / "marker"
    folder = dcp_files.save(torch, tmp_path / "evil", {"w": torch.ones(2),
                                                     "extra": Payload(f"touch {marker}")})
    ckpt = open_checkpoint(folder)
    report = scan(ckpt)
    assert report.verdict == "dangerous"
    assert any(f.file == "__0_0.distcp" and f.severity == "dangerous" for f in report.findings)
    assert set(_tensors(ckpt)) == {"w"}
    assert not marker.exists()


def test_lightning_ckpt_folder_is_dcp(one_rank, torch, tmp_path):
    import shutil

    folder = tmp_path / "epoch=1-step=10.ckpt"
    shutil.copytree(one_rank[0], folder)
    ckpt = open_checkpoint(folder)
    assert ckpt.format == "dcp"
    _check_against(torch, ckpt, one_rank[1])


def test_broken_metadata_is_one_clear_error(one_rank, tmp_path):
    import shutil

    from ckpt_inspector.core import CheckpointError

    folder = tmp_path / "bad"
    shutil.copytree(one_rank[0], folder)
    meta = folder / ".metadata"
    meta.write_bytes(meta.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r"^\.metadata: broken pickle") as err:
        open_checkpoint(folder)
    assert err.value.partial is not None and err.value.partial.pickles
    meta.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match=r"holds no torch\.distributed\.checkpoint") as err:
        open_checkpoint(folder)
    assert err.value.partial is not None and err.value.partial.pickles


@pytest.mark.parametrize("kind", ["bare pickle", "tar and pickle"])
def test_a_bytes_entry_that_is_no_zip_is_read_as_torch_load_of_bytes_reads_it(torch, tmp_path,
                                                                          kind):
    """torch.load(io.BytesIO(item)) runs anything that is not a zip as a pickle stream (it
    tries a tar only on a real file): such an item was 'not a zip archive', needs-trust,
    while dcp.load ran its payload."""
    import hostile_zip
    from support import payload

    marker = tmp_path / "marker"
    folder = dcp_files.save(torch, tmp_path / "evil", {"w": torch.zeros(3),
                                                     "extra": {"note": "hello"}})
    body = (payload(marker) if kind == "bare pickle"
            else hostile_zip.tar_and_pickle(marker))
    meta_path = folder / ".metadata"
    meta = pickle.loads(meta_path.read_bytes())  # our own file, made by dcp.save above
    for index, info in meta.storage_data.items():
        if "note" in index.fqn:
            data = folder / info.relative_path
            info.offset, info.length = data.stat().st_size, len(body)
            with open(data, "ab") as f:
                f.write(body)
    meta_path.write_bytes(pickle.dumps(meta))
    report = scan(open_checkpoint(folder))
    assert report.verdict == "dangerous"
    assert "dangerous-import" in {f.code for f in report.findings}, report.findings
    assert not marker.exists()

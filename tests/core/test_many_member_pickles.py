"""An archive of very many small pickles (a million of them is an attack on the reader,
not a checkpoint): past a number of them, or past the time limit every pickle of the file
shares, the rest are not read and the archive is refused; quiet pickles first never let
a payload after them be called safe."""

from __future__ import annotations

import io
import pickle
import time
import zipfile

import pytest

from ckpt_inspector.core import open_checkpoint
from ckpt_inspector.core.errors import PickleError
from ckpt_inspector.core.findings import DANGEROUS
from ckpt_inspector.core.formats import _quota, torch_zip
from ckpt_inspector.core.pickle import vm
from ckpt_inspector.core.scan import scan

from hostile_zip import _pt2_parts, benign_members, simple_zip
from support import payload

QUIET = pickle.dumps({"step": 1}, protocol=2)


def _with_records(members, marker, quiet: int):
    """``quiet`` harmless .pkl records, then one that would create ``marker``."""
    root = members[0][0].split("/", 1)[0]
    extra = [(f"{root}/extra{i}.pkl", QUIET) for i in range(quiet)]
    extra.append((f"{root}/extra{quiet}.pkl", payload(marker)))
    return simple_zip([*members, *extra])


def _unread(ckpt):
    return [f for f in scan(ckpt).findings if f.code == "unread-member"]


@pytest.mark.parametrize("kind", ["torch-zip", "pt2"])
def test_past_the_number_of_pickles_the_rest_are_refused(torch, tmp_path, marker,
                                                         monkeypatch, kind):
    monkeypatch.setattr(_quota, "MAX_MEMBER_PICKLES", 5)
    members = benign_members(torch) if kind == "torch-zip" else _pt2_parts(torch)
    path = tmp_path / ("many.pt" if kind == "torch-zip" else "many.pt2")
    path.write_bytes(_with_records(members, marker, quiet=8))
    ckpt = open_checkpoint(str(path))
    (found,) = _unread(ckpt)
    assert found.severity == DANGEROUS
    assert "more than 5 of them are pickles" in found.message
    assert "and 1 more" in found.message  # extra5..extra8: four not read
    # the payload in extra8 was never interpreted, and still the file is not safe
    report = scan(ckpt)
    assert not any("system" in f.message for f in report.findings)
    assert report.verdict == DANGEROUS


def test_within_the_number_every_pickle_is_read(torch, tmp_path, marker):
    path = tmp_path / "few.pt"
    path.write_bytes(_with_records(benign_members(torch), marker, quiet=8))
    ckpt = open_checkpoint(str(path))
    assert not _unread(ckpt)
    report = scan(ckpt)
    assert report.verdict == DANGEROUS
    assert any("system" in f.message for f in report.findings)


def test_past_the_shared_time_limit_the_rest_are_refused(torch, tmp_path, marker,
                                                         monkeypatch):
    path = tmp_path / "slow.pt"
    path.write_bytes(_with_records(benign_members(torch), marker, quiet=3))
    monkeypatch.setattr(vm, "past_deadline", lambda: True)  # data.pkl reads on its own clock
    ckpt = open_checkpoint(str(path))
    (found,) = _unread(ckpt)
    assert found.severity == DANGEROUS and "took more than 15 s" in found.message
    # none of the other records was read, the payload in extra3.pkl included
    assert [p.member for p in ckpt.pickles] == ["archive/data.pkl"]
    assert ckpt.root is not None and ckpt.root.children  # the checkpoint is still shown


def test_the_deadline_is_only_past_inside_a_block_that_set_it():
    assert not vm.past_deadline()
    with vm.deadline(-1.0):
        assert vm.past_deadline()
    with vm.deadline():
        assert not vm.past_deadline()


def test_a_record_whose_try_runs_out_of_time_is_refused(torch, tmp_path, marker,
                                                        monkeypatch):
    """The time limit passing while a record is tried (after the check before it) leaves
    that record unread, never taken for 'not a pickle'."""
    late = {"now": False}
    real = vm.load

    def load(data, *args, **kwargs):
        if b"system" in bytes(data[:64]):  # the payload's first opcodes: time runs out
            late["now"] = True
            raise PickleError("reading the stream took more than 15 s", 0, limit=True)
        return real(data, *args, **kwargs)

    monkeypatch.setattr(vm, "load", load)
    monkeypatch.setattr(vm, "past_deadline", lambda: late["now"])
    members = benign_members(torch)
    path = tmp_path / "late.pt"
    path.write_bytes(simple_zip([*members, ("archive/extra/blob", payload(marker))]))
    report = scan(open_checkpoint(str(path)))
    assert report.verdict == DANGEROUS
    (found,) = [f for f in report.findings if f.code == "unread-member"]
    assert "archive/extra/blob" in found.message and "15 s" in found.message


def test_building_the_tree_does_not_use_up_the_pickles_time(torch, tmp_path, monkeypatch):
    """The limit is on reading pickles: a large checkpoint's tree (seconds of Python) does
    not leave its other records unread."""
    real = torch_zip.build_tree

    def slow(*args, **kwargs):
        time.sleep(0.6)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch_zip, "build_tree", slow)
    path = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with vm.deadline(0.5):
        report = scan(open_checkpoint(str(path)))
    assert not [f for f in report.findings if f.code == "unread-member"]
    assert report.verdict == "safe"


def _plain_zip(members) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in members:
            z.writestr(name, data)
    return out.getvalue()


def test_a_plain_archive_of_pickles_has_the_same_bound(tmp_path, marker, monkeypatch):
    monkeypatch.setattr(_quota, "MAX_MEMBER_PICKLES", 5)
    members = [(f"m{i}.pkl", QUIET) for i in range(8)] + [("z.pkl", payload(marker))]
    path = tmp_path / "many.zip"
    path.write_bytes(_plain_zip(members))
    ckpt = open_checkpoint(str(path))
    report = scan(ckpt)
    assert report.verdict == DANGEROUS
    (found,) = [f for f in report.findings if f.code == "unread-member"]
    assert "more than 5 of them are pickles" in found.message
    assert not any("system" in f.message for f in report.findings)


def test_archives_inside_an_archive_share_one_bound(torch, tmp_path, marker, monkeypatch):
    """Three checkpoints, each with three more pickles, in one zip: eleven pickles
    against a bound of eight, wherever they are."""
    monkeypatch.setattr(_quota, "MAX_MEMBER_PICKLES", 8)
    inner = _with_records(benign_members(torch), marker, quiet=2)
    path = tmp_path / "nest.zip"
    path.write_bytes(_plain_zip([(f"ckpt{i}.pt", inner) for i in range(3)]))
    report = scan(open_checkpoint(str(path)))
    assert report.verdict == DANGEROUS
    assert any(f.code == "unread-member" for f in report.findings)

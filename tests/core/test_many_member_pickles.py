"""An archive of very many small pickles (a million of them is an attack on the reader,
not a checkpoint): past a number of them, or past the time limit every pickle of the file
shares, the rest are not read and the archive is refused; quiet pickles first never let
a payload after them be called safe."""

from __future__ import annotations

import pickle

import pytest

from ckpt_inspector.core import open_checkpoint
from ckpt_inspector.core.findings import DANGEROUS
from ckpt_inspector.core.formats import torch_zip
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
    monkeypatch.setattr(torch_zip, "MAX_MEMBER_PICKLES", 5)
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

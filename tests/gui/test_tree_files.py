"""The key tree's File column: the file of each tensor of a checkpoint made of several files,
hidden for one file; sorted and filtered (``file:``) like the other columns."""

from __future__ import annotations

import json

import numpy as np
from PySide6.QtCore import Qt
from safetensors.numpy import save_file

from ckpt_inspector.gui.tree.model import FILE, KEY, NodeRole

from support import open_and_wait


def _sharded(folder, shards: int = 3, per: int = 4) -> dict[str, str]:
    """``shards`` safetensors shards and their index, written with safetensors itself."""
    folder.mkdir()
    weight_map = {}
    for k in range(shards):
        name = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {f"model.layers.{k * per + i}.weight": np.full((2, 3), k, np.float32)
                for i in range(per)}
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return weight_map


def _rows(view) -> list[tuple[str, str]]:
    """(key, File text) of every tensor row the tree shows, in its order."""
    proxy, out, stack = view.proxy, [], [view.tree.rootIndex()]
    while stack:
        parent = stack.pop(0)
        for row in range(proxy.rowCount(parent)):
            idx = proxy.index(row, KEY, parent)
            node = idx.data(NodeRole)
            if node.is_tensor:
                out.append((node.key, proxy.index(row, FILE, parent).data()))
            stack.append(idx)
    return out


def test_the_file_column_names_each_tensors_shard(qtbot, window, tmp_path):
    weight_map = _sharded(tmp_path / "sharded")
    view = open_and_wait(qtbot, window, tmp_path / "sharded")
    assert not view.tree.isColumnHidden(FILE)
    assert view.proxy.headerData(FILE, Qt.Orientation.Horizontal) == "File"
    rows = _rows(view)
    assert len(rows) == len(weight_map) and all(weight_map[k] == f for k, f in rows)
    view.group_box.setChecked(False)  # the flat tree has the column too
    assert not view.tree.isColumnHidden(FILE)
    assert sorted(_rows(view)) == sorted(weight_map.items())


def test_sort_and_filter_by_file(qtbot, window, tmp_path):
    weight_map = _sharded(tmp_path / "sharded")
    view = open_and_wait(qtbot, window, tmp_path / "sharded")
    view.group_box.setChecked(False)
    view.tree.sortByColumn(FILE, Qt.SortOrder.DescendingOrder)
    files = [f for _k, f in _rows(view)]
    assert files == sorted(files, reverse=True) and files[0].startswith("model-00003")
    view.filter_edit.setText("file:-00002-")
    view.apply_filter()
    shown = _rows(view)
    assert shown and {f for _k, f in shown} == {"model-00002-of-00003.safetensors"}
    assert len(shown) == sum(f.startswith("model-00002") for f in weight_map.values())
    assert "4 tensors" in view.match_label.text()


def test_one_file_has_no_file_column(qtbot, window, tmp_path):
    path = tmp_path / "one.safetensors"
    save_file({"a.weight": np.zeros((2, 2), np.float32)}, str(path))
    view = open_and_wait(qtbot, window, path)
    assert view.tree.isColumnHidden(FILE)
    assert _rows(view) == [("a.weight", "")]


def test_the_model_passes_qt_checks(qtmodeltester, qtbot, window, tmp_path):
    _sharded(tmp_path / "sharded", shards=2, per=3)
    view = open_and_wait(qtbot, window, tmp_path / "sharded")
    qtmodeltester.check(view.model())

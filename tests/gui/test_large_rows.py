"""A module of thousands of rows costs nothing until it is opened: the filter proxy does not
ask its filterAcceptsRow (a Python call from C++) once per row of a closed large row, when
the tree is shown or when the filter changes; opened, it shows every row, and a filter
finds rows inside it."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
from safetensors.numpy import save_file

from ckpt_inspector.gui.tree import checkpoint_view as view_mod
from ckpt_inspector.gui.tree import model as model_mod
from ckpt_inspector.gui.tree.model import NodeRole

from support import open_and_wait

LAYERS = 3000  # more than NodeTreeModel.LAZY_ROWS


@pytest.fixture
def layers_file(tmp_path):
    path = tmp_path / "many_layers.safetensors"
    tensors = {f"model.layers.{i}.w": np.zeros(2, np.float32) for i in range(LAYERS)}
    tensors["model.norm.weight"] = np.zeros(4, np.float32)
    save_file(tensors, str(path))
    return path


def _child(proxy, parent, label):
    for row in range(proxy.rowCount(parent)):
        index = proxy.index(row, 0, parent)
        if index.data(NodeRole).label == label:
            return index
    raise KeyError(label)


class CountingProxy(model_mod.FilterProxy):
    """Counts the rows the proxy asks about. A subclass, not a patched method: shiboken
    caches a wrapper's Python override of a C++ virtual, so a method patched on
    FilterProxy and restored after the test is freed while a proxy of that test can still
    call it (its window's filter timer firing during the next test): a segfault."""

    asked: ClassVar[list[int]] = []

    def filterAcceptsRow(self, row, parent):
        self.asked.append(row)
        return super().filterAcceptsRow(row, parent)


def test_a_closed_large_row_is_not_mapped(qtbot, window, layers_file, monkeypatch):
    assert model_mod.NodeTreeModel.LAZY_ROWS < LAYERS
    asked = CountingProxy.asked = []
    monkeypatch.setattr(view_mod, "FilterProxy", CountingProxy)
    view = open_and_wait(qtbot, window, layers_file)
    assert isinstance(view.proxy, CountingProxy)
    proxy, tree = view.proxy, view.tree
    model = _child(proxy, proxy.index(0, 0).parent(), "model")
    layers = _child(proxy, model, "layers")
    assert tree.isExpanded(model) and not tree.isExpanded(layers)
    assert proxy.hasChildren(layers)  # its arrow shows
    assert len(asked) < 100, len(asked)

    # a filter and its clearing do not walk the closed rows either
    asked.clear()
    view.filter_edit.setText("norm")
    view.apply_filter()
    qtbot.waitUntil(lambda: proxy.filtering)
    view.filter_edit.setText("")
    view.apply_filter()
    assert not proxy.filtering
    assert len(asked) < 100, len(asked)

    # opened, it shows all its rows; a filter then finds one inside it
    layers = _child(proxy, _child(proxy, proxy.index(0, 0).parent(), "model"), "layers")
    tree.expand(layers)
    assert proxy.rowCount(layers) == LAYERS
    assert len(asked) >= LAYERS
    view.filter_edit.setText("layers.2999.w")
    view.apply_filter()
    qtbot.waitUntil(lambda: proxy.filtering)
    layers = _child(proxy, _child(proxy, proxy.index(0, 0).parent(), "model"), "layers")
    assert proxy.rowCount(layers) == 1
    assert proxy.index(0, 0, layers).data(NodeRole).key == "model.layers.2999"


def test_a_filter_finds_rows_in_a_row_never_opened(qtbot, window, layers_file):
    view = open_and_wait(qtbot, window, layers_file)
    proxy = view.proxy
    with qtbot.waitSignal(view.filtered, timeout=10_000):
        view.filter_edit.setText("layers.1234.")
        view.apply_filter()
    layers = _child(proxy, _child(proxy, proxy.index(0, 0).parent(), "model"), "layers")
    assert view.tree.isExpanded(layers)  # few matches: opened by themselves
    [row] = [proxy.index(r, 0, layers).data(NodeRole).key for r in range(proxy.rowCount(layers))]
    assert row == "model.layers.1234"

"""One open file: security banner, filter, the key tree, and the summary/selection panels."""

from __future__ import annotations

import os
from html import escape
from typing import Any
from urllib.parse import urlsplit

from PySide6.QtCore import QEvent, QModelIndex, QPoint, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QMenu,
    QSplitter,
    QStackedWidget,
    QTextBrowser,
    QToolButton,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from ckpt_inspector.core import query as query_mod
from ckpt_inspector.core.display import DisplayNode
from ckpt_inspector.core.ops.session import LoadedFile, load_file
from ckpt_inspector.core.ops.stats import Stats
from ckpt_inspector.core.progress import Progress
from ckpt_inspector.core.torch_load_prediction import predict
from ckpt_inspector.core.tree import TensorInfo
from ckpt_inspector.gui.analysis import Analysis
from ckpt_inspector.gui.errors import ErrorReporter, describe
from ckpt_inspector.gui.html.adapter import adapter_html, pair_html
from ckpt_inspector.gui.html.checkpoint import details_html, summary_html
from ckpt_inspector.gui.html.overview import overview_html
from ckpt_inspector.gui.html.torch_load import COPY_FIX_URL
from ckpt_inspector.gui.jobs import JobRunner
from ckpt_inspector.gui.release import release_soon
from ckpt_inspector.gui.remote import is_url, name_of, normalize, strip_credentials
from ckpt_inspector.gui.tensor.view import TensorView
from ckpt_inspector.gui.theme import is_palette_change, span
from ckpt_inspector.gui.tree.banners import (
    make_files_banner,
    show_files_banner,
    show_verdict_banner,
)
from ckpt_inspector.gui.tree.filtering import (
    Result,
    SlicedMatcher,
    expanded_keys,
    match_now,
    restore_expansion,
)
from ckpt_inspector.gui.tree.model import (
    DEVICE,
    ELEMENTS,
    FILE,
    SHAPE,
    SIZE,
    TYPE,
    CheckpointModel,
    FilterProxy,
    NodeRole,
    shape_text,
)
from ckpt_inspector.gui.tree.widgets import (
    ColumnFitter,
    ElideMiddle,
    MessagePage,
    copy_keys,
    current_node,
    make_filter_edit,
    make_key_tree,
    select_key,
    selected_nodes,
    set_tree_model,
    wrappable,
)

FILTER_HELP = (
    "<b>Filter syntax</b> — terms separated by spaces must all match<br>"
    "<code>conv</code> — key contains 'conv' (case-insensitive)<br>"
    "<code>re:^layer[12]\\.</code> or <code>/bias$/</code> — regular expression; "
    "^ anchors at any key segment<br>"
    "<code>shape:768x768</code>, <code>shape:[]</code> — tensor shape; <code>*</code> is one "
    "dimension of any size (<code>shape:*x768</code>), <code>**</code> any number of them "
    "(<code>shape:**x3x3</code>: every 3×3 kernel)<br>"
    "<code>dtype:bf16</code>, <code>dtype:float8</code> — dtype or alias (fp16, fp32, half, …)<br>"
    "<code>device:cuda</code> — device saved in the file<br>"
    "<code>role:buffer</code> — parameter, buffer or attribute<br>"
    "<code>file:-00002-</code> — the file that holds the tensor (a model in several files)"
)
DEBOUNCE_MS = 200
SIDE_MIN = 190  # the summary and details panels' least width
KEY_MIN = 200  # the Key column's least width: below it the tree scrolls sideways
COLUMN_CAPS = {TYPE: 160, SHAPE: 170, ELEMENTS: 110, SIZE: 90, DEVICE: 110, FILE: 240}
COLUMNS_GIVE_WAY = [(SHAPE, 95), (TYPE, 80), (FILE, 110)]  # in turn, to the least width
AUTO_EXPAND_LIMIT = 400
SYNC_FILTER_TENSORS = 5_000  # a larger tree is filtered a slice at a time


def _load(path: str, flat: bool = False, cancel: Any = None, progress: Any = None
          ) -> tuple[LoadedFile, int, str]:
    """What a tab reads on a worker: the file (and its flat tree when that is what the tab
    shows), how many files hold its tensors, and the folder they all lie in ("" if none:
    the File column leaves it out)."""
    file = load_file(path, flat, cancel, progress)  # a URL's transfer stops when cancelled
    files = {n.tensor.file for n in file.ckpt.root.walk() if n.tensor is not None}
    folders = {os.path.dirname(f or "") for f in files}
    return file, len(files), folders.pop() if len(folders) == 1 else ""


class CheckpointView(QWidget):
    """A tab. Reading happens on a worker; a result for an older request is dropped."""

    loaded = Signal(object)  # LoadedFile, once the tree is shown
    failed = Signal(str)
    filtered = Signal()  # a filter's result is shown (for a large tree, a moment later)

    def __init__(self, path: str, runner: JobRunner, reporter: ErrorReporter,
                 target_device: str = "cpu", parent: QWidget | None = None):
        super().__init__(parent)
        self.path = normalize(path)  # a URL stays as it is
        self.runner = runner
        self.reporter = reporter
        self.target_device = target_device
        self.devices: list[dict[str, Any]] | None = None  # with free memory, once listed
        self.file: LoadedFile | None = None
        self._generation = 0
        self._disposed = False
        self._models: dict[bool, CheckpointModel] = {}
        self._expanded_before_filter: set[str] | None = None
        self.matcher = SlicedMatcher(self)
        self.matcher.done.connect(self._show_matches)
        self._tensor_files = 0  # how many files hold the open file's tensors
        self._overviews: dict[tuple[int, bool], str] = {}  # a row's overview (id, wide)
        self._files_folder = ""  # the folder they all lie in, left out of the File column
        self._build()

    # -- layout ------------------------------------------------------------------------------
    def _build(self) -> None:
        self.banner = QLabel()
        self.banner.setObjectName("securityBanner")
        self.banner.setWordWrap(True)
        self.banner.setTextFormat(Qt.TextFormat.RichText)
        self.banner.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.banner.hide()
        self.files_banner = make_files_banner()

        self.filter_edit = make_filter_edit(
            "filterEdit", "Filter keys   (text, re:pattern, shape:768x768, dtype:bf16 — ? for "
            "help)", self.apply_filter, DEBOUNCE_MS, self)
        self.filter_edit.setToolTip(FILTER_HELP)
        self.filter_help = QToolButton()
        self.filter_help.setText("?")
        self.filter_help.setToolTip(FILTER_HELP)
        self.filter_help.setAutoRaise(True)
        self.filter_help.clicked.connect(self._show_filter_help)
        self.match_label = QLabel()
        self.match_label.setObjectName("matchLabel")
        self.match_label.setMaximumWidth(150)
        self.group_box = QCheckBox("Group by module")
        self.group_box.setChecked(True)
        self.group_box.setToolTip("Group dotted state_dict keys (layer1.0.conv1.weight) into "
                                  "a module tree; untick for the file's flat keys")
        self.group_box.toggled.connect(self._set_grouped)

        filter_row = QHBoxLayout()
        filter_row.setContentsMargins(0, 0, 0, 0)
        filter_row.addWidget(self.filter_edit, 1)
        filter_row.addWidget(self.filter_help)
        filter_row.addWidget(self.match_label)
        filter_row.addWidget(self.group_box)

        self.proxy = FilterProxy(self)
        # the current row may vanish under a filter: keep the details panel honest
        self.tree = make_key_tree(self.proxy, "keyTree", self._current_changed,
                                  self._context_menu, self.copy_keys, self._refresh_details)
        self.tree.setItemDelegateForColumn(FILE, ElideMiddle(self.tree))  # ranks differ last
        self.columns = ColumnFitter(self.tree, KEY_MIN, COLUMN_CAPS, COLUMNS_GIVE_WAY,
                                    self._column_texts)
        self.columns.short.connect(self._columns_short)

        top = QWidget()
        lv = QVBoxLayout(top)
        lv.setContentsMargins(0, 0, 0, 0)
        lv.setSpacing(4)
        lv.addWidget(self.banner)
        lv.addWidget(self.files_banner)
        lv.addLayout(filter_row)
        lv.addWidget(self.tree, 1)
        self.analysis = Analysis(self.runner, self)
        self.analysis.changed.connect(self._stats_ready)
        self.tensor_view = TensorView(self.runner, self.reporter, self.analysis)
        self.tensor_view.set_device(self.target_device)
        self.tensor_view.key_requested.connect(self.select_key)
        left = QSplitter(Qt.Orientation.Vertical)
        left.setObjectName("treeAndTensor")
        left.addWidget(top)
        left.addWidget(self.tensor_view)
        left.setStretchFactor(0, 1)
        left.setStretchFactor(1, 1)
        left.setChildrenCollapsible(False)
        left.setSizes([420, 420])
        left.setMinimumWidth(360)
        self.left_splitter = left

        self.summary = QTextBrowser()
        self.summary.setObjectName("summaryPanel")
        self.summary.setOpenLinks(False)
        self.summary.anchorClicked.connect(self._summary_link)
        self.details = QTextBrowser()
        self.details.setObjectName("detailsPanel")
        self.details.setHtml(details_html(None, self.target_device))
        side = QSplitter(Qt.Orientation.Vertical)
        side.addWidget(self.summary)
        side.addWidget(self.details)
        side.setStretchFactor(0, 1)
        side.setStretchFactor(1, 1)
        side.setMinimumWidth(SIDE_MIN)  # at small widths the tree gets the space

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(left)
        self.splitter.addWidget(side)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.setSizes([950, 330])

        # a page for "reading…", errors and cancellations, with a button to read again
        self.message = MessagePage("viewStatus", "Read again", self.start_loading)
        self.status, self.retry_button = self.message.label, self.message.button
        self.retry_button.setObjectName("retryButton")

        self.pages = QStackedWidget()
        self.pages.addWidget(self.message)
        self.pages.addWidget(self.splitter)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.pages)

    def changeEvent(self, event: QEvent) -> None:
        """A theme switch: draw the panels again in its colours."""
        super().changeEvent(event)
        if is_palette_change(event) and self.file is not None:
            self._show_summary(self.file)
            self._show_banner(self.file)
            self._overviews.clear()
            self._refresh_details()

    def _show_message(self, html: str, retry: bool) -> None:
        self.message.show_message(html, retry)
        self.pages.setCurrentIndex(0)

    # -- loading -------------------------------------------------------------------------------
    def start_loading(self) -> None:
        self._generation += 1
        generation = self._generation
        name = name_of(self.path)
        where = f" from {escape(urlsplit(self.path).hostname or '')}" if is_url(self.path) \
            else ""
        reading = f"Reading <b>{escape(name)}</b>{where}"
        self._show_message(reading + "…", retry=False)

        def progressed(p: Progress) -> None:  # a checkpoint of many files: which one
            if generation == self._generation and self.pages.currentIndex() == 0:
                step = f"{p.done:,} of {p.total:,} {p.stage}" if p.total else f"{p.stage}…"
                detail = f"<br>{escape(p.detail)}" if p.detail else ""
                self.message.show_message(f"{reading}: {step}{detail}", False)

        self.runner.run(f"Reading {name}", _load, self.path, not self.group_box.isChecked(),
                        on_progress=progressed, reports=True,
                        on_result=lambda r: self._loaded(r[0], generation, r[1], r[2]),
                        on_error=lambda e: self._failed(e, generation),
                        on_discard=lambda r: release_soon(r[0]),
                        on_cancel=lambda: self._cancelled(generation), cancellable=True)

    def _loaded(self, file: LoadedFile, generation: int, files: int = 1,
                folder: str = "") -> None:
        if generation != self._generation or self._disposed:
            release_soon(file)  # superseded by a newer request, or the tab is gone
            return
        previous, old_models = self.file, list(self._models.values())
        self.file = file
        self._tensor_files, self._files_folder = files, folder
        self.tensor_view.set_file(file.path)
        self.tensor_view.lora.set_adapter(file.adapter)
        # a model per tree, made when first shown (the flat tree is built then too)
        self._models = {}
        self._show_model(self.group_box.isChecked())
        if file.totals["tensors"] > SYNC_FILTER_TENSORS:  # the tree first, then the summary
            self.summary.clear()
            QTimer.singleShot(0, self, lambda: self._show_summary(file))
        else:
            self._show_summary(file)
        self._show_banner(file)
        self.pages.setCurrentIndex(1)
        for model in old_models:
            model.deleteLater()
        if previous is not None:
            release_soon(previous)
        self.loaded.emit(file)

    def _show_summary(self, file: LoadedFile) -> None:
        if file is self.file:
            self.summary.setHtml(summary_html(file, adapter_html(file.adapter), self.devices))

    def torch_load_fix(self) -> str | None:
        """The code that makes torch.load accept the open file (the summary's Copy link)."""
        file = self.file
        if file is None:
            return None
        return predict(file.ckpt, file.report, devices=file.totals.get("devices") or {}).fix

    def _summary_link(self, url: QUrl) -> None:
        if url.toString() == COPY_FIX_URL:
            fix = self.torch_load_fix()
            if fix:
                QGuiApplication.clipboard().setText(fix)

    def _failed(self, err: BaseException, generation: int) -> None:
        if generation != self._generation:
            return
        message, _details = describe(err)
        self._show_message(f"<b>Could not read {escape(name_of(self.path))}</b>"
                           f"<br><br>{wrappable(message)}", retry=True)
        self.reporter.report("Could not open the file", err, strip_credentials(self.path))
        self.failed.emit(message)

    def _cancelled(self, generation: int) -> None:
        if generation == self._generation and self.file is None:
            self._show_message(f"Reading <b>{escape(name_of(self.path))}</b> was "
                               "cancelled.", retry=True)

    def _model(self, grouped: bool) -> CheckpointModel | None:
        model = self._models.get(grouped)
        if model is None and self.file is not None:
            file = self.file
            model = self._models[grouped] = CheckpointModel(file.tree(grouped), self)
            model.set_target_device(self.target_device)
            model.files_folder = self._files_folder
            model.dangerous = {f.name for f in file.report.findings
                               if f.severity == "dangerous" and f.name}
        return model

    def _show_model(self, grouped: bool) -> None:
        model = self._model(grouped)
        if model is None:
            return
        self._overviews.clear()  # made of the other tree's rows
        current = set_tree_model(self.tree, model, [])
        # the File column only says something when the tensors lie in several files
        self.tree.setColumnHidden(FILE, self._tensor_files < 2)
        self._expanded_before_filter = None
        self.apply_filter()
        if not self.filter_edit.text().strip():
            self._expand_top()
        self.columns.fit()
        if current is not None:
            self.select_key(current.key)

    def _expand_top(self) -> None:
        """Show the first level of every top-level container: a file at a glance."""
        root = QModelIndex()
        rows = self.proxy.rowCount(root)
        if rows == 1:
            self.tree.expand(self.proxy.index(0, 0, root))
        for row in range(min(rows, 50)):
            idx = self.proxy.index(row, 0, root)
            if self.proxy.rowCount(idx) <= 64:
                self.tree.expand(idx)

    def _show_banner(self, file: LoadedFile) -> None:
        show_files_banner(self.files_banner, file.ckpt)
        show_verdict_banner(self.banner, file)

    # -- filter --------------------------------------------------------------------------------
    def apply_filter(self) -> None:
        """Filter by the field's query: at once for a small tree, a slice at a time for a
        large one (matching 100,000 keys takes half a second); ``filtered`` once shown."""
        model = self.proxy.sourceModel()
        if not isinstance(model, CheckpointModel):
            return
        self.matcher.cancel()
        text = self.filter_edit.text().strip()
        try:
            q = query_mod.parse(text)
        except query_mod.QueryError as err:
            # keep the last good result; say what is wrong without squeezing the field
            self.match_label.setText(span("danger", "invalid filter"))
            self.match_label.setToolTip(str(err))
            self.filtered.emit()
            return
        self.match_label.setToolTip("")
        if q.empty:
            if self.proxy.filtering:
                self.proxy.set_matches(None)
                self._restore_expansion()
            self.match_label.setText("")
            self.filtered.emit()
            return
        if not self.proxy.filtering:
            self._expanded_before_filter = expanded_keys(self.tree)
        top = model.node(QModelIndex())
        if top.tensors <= SYNC_FILTER_TENSORS:
            self._show_matches(match_now(top, q))
            return
        self.match_label.setText(span("muted", "filtering…"))
        self.matcher.start(top, q)  # _show_matches when done

    def _show_matches(self, result: Result) -> None:
        visible, rows, tensors = result
        self.proxy.set_matches(visible)
        if not rows:
            label = span("danger", "no match")
        elif tensors:
            label = f"{tensors:,} tensor{'s' if tensors != 1 else ''}"
        else:
            label = f"{rows:,} match{'es' if rows != 1 else ''}"
        self.match_label.setText(label)
        self.match_label.setToolTip(f"{rows:,} rows match, {tensors:,} of them tensors")
        if rows <= AUTO_EXPAND_LIMIT:
            self.tree.expandAll()
        self.filtered.emit()

    def _restore_expansion(self) -> None:
        keys, self._expanded_before_filter = self._expanded_before_filter, None
        if keys is not None:
            restore_expansion(self.tree, keys)

    def _set_grouped(self, grouped: bool) -> None:
        if self.file is not None:
            self._show_model(grouped)

    # -- selection and commands ------------------------------------------------------------------
    def set_target_device(self, device: str) -> None:
        self.target_device = device
        self.tensor_view.set_device(device)
        for model in self._models.values():
            model.set_target_device(device)
        self.columns.grow()  # "cuda:0" may now read "cuda:0 → cpu"
        self._refresh_details()

    def set_devices(self, devices: list[dict[str, Any]] | None) -> None:
        """The devices here with their free memory: the summary says whether the weights
        fit."""
        self.devices = devices
        if self.file is not None and devices is not None:
            self._show_summary(self.file)

    def _column_texts(self, column: int) -> list[str]:
        """What a column shows in rows that may not be expanded yet: every device's text."""
        model = self.proxy.sourceModel()
        if column != DEVICE or self.file is None or not isinstance(model, CheckpointModel):
            return []
        return [model.device_text(d) for d in self.file.totals.get("devices") or {}]

    def _columns_short(self, pixels: int) -> None:
        """The tree's columns lack room: the summary panel yields it, to its least width."""
        tree, side = self.splitter.sizes()
        give = min(pixels, side - SIDE_MIN)
        if pixels and give > 0:
            self.splitter.setSizes([tree + give, side - give])

    def focus_filter(self) -> None:
        self.filter_edit.setFocus()
        self.filter_edit.selectAll()

    def current_node(self) -> DisplayNode | None:
        return current_node(self.tree)

    def select_key(self, key: str) -> bool:
        """Make the row with this full key current (expanding its parents)."""
        return select_key(self.tree, key)

    def _current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        node = current.data(NodeRole) if current.isValid() else None
        info = node.node.tensor if node is not None and node.is_tensor else None
        self.details.setHtml(self._details_html(node, info))
        if node is None or (info is None and node.children):
            self._show_overview(node)  # the file's, or the group's, largest tensors
        elif info is None:
            self.tensor_view.show_node(node.key, None, f"{node.key or '(root)'} is not a "
                                       "tensor: its value is in the tree.")
        elif info is not self.tensor_view.info:
            self.tensor_view.show_node(node.key, info)

    def _details_html(self, node: DisplayNode | None, info: TensorInfo | None) -> str:
        """The details of a row; for a tensor of a LoRA pair, the pair and the statistics of
        its effective update once computed."""
        lora = self.tensor_view.lora
        return (details_html(node, self.target_device, self._stats_of(info))
                + pair_html(lora.module(info), self._stats_of(lora.update_of(info))))

    def _show_overview(self, node: DisplayNode | None) -> None:
        model = self.proxy.sourceModel()
        if not isinstance(model, CheckpointModel):
            self.tensor_view.show_node("", None)
            return
        top = node or model.node(QModelIndex())

        def make(wide: bool) -> str:  # made once for each width and row
            html = self._overviews.get((id(top), wide))
            if html is None:
                html = self._overviews[id(top), wide] = overview_html(
                    top, node.key if node is not None else "", node is None, wide)
            return html

        self.tensor_view.show_overview(make)

    def _stats_of(self, info: TensorInfo | None) -> Stats | None:
        stats = self.analysis.stats(info) if info is not None else None
        return stats if isinstance(stats, Stats) else None

    def _stats_ready(self, info: Any) -> None:
        node = self.current_node()
        if node is not None and node.is_tensor and (
                node.node.tensor is info or self.tensor_view.lora.update_of(node.node.tensor)
                is info):
            self.details.setHtml(self._details_html(node, node.node.tensor))

    def _refresh_details(self, *_args: Any) -> None:
        self._current_changed(self.tree.currentIndex(), QModelIndex())

    def copy_keys(self) -> None:
        copy_keys(self.tree)

    def copy_shapes(self) -> None:
        nodes = selected_nodes(self.tree)
        if nodes:
            QGuiApplication.clipboard().setText("\n".join(shape_text(n) for n in nodes))

    def _context_menu(self, pos: QPoint) -> None:
        index = self.tree.indexAt(pos)
        if not index.isValid():
            return
        has_children = self.proxy.rowCount(index.siblingAtColumn(0)) > 0
        menu = QMenu(self.tree)
        menu.addAction("Copy key", self.copy_keys)
        menu.addAction("Copy shape / value", self.copy_shapes)
        menu.addSeparator()
        menu.addAction("Expand all below",
                       lambda: self.tree.expandRecursively(index)).setEnabled(has_children)
        menu.addAction("Collapse", lambda: self.tree.collapse(index)).setEnabled(
            has_children and self.tree.isExpanded(index.siblingAtColumn(0)))
        menu.exec(self.tree.viewport().mapToGlobal(pos))

    def _show_filter_help(self) -> None:
        QToolTip.showText(self.filter_help.mapToGlobal(QPoint(0, self.filter_help.height())),
                          FILTER_HELP, self.filter_help)

    def model(self) -> Any:
        return self.proxy.sourceModel()

    def dispose(self) -> None:
        """The tab is closing: detach the views from the trees, then free the trees."""
        self._disposed = True
        self._generation += 1
        self.matcher.cancel()
        self.tensor_view.dispose()
        self.proxy.setSourceModel(None)
        self._models = {}
        if self.file is not None:
            release_soon(self.file)
            self.file = None

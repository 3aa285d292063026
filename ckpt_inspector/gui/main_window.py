"""The main window: menus, toolbar with the device picker, tabs, file browser, status bar."""

from __future__ import annotations

import json
import os
from typing import Any

from PySide6.QtCore import QPoint, QSettings, QSize, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import (
    QAction,
    QActionGroup,
    QCloseEvent,
    QDragEnterEvent,
    QDropEvent,
    QIcon,
    QKeySequence,
)
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QStackedWidget,
    QTabWidget,
    QToolBar,
    QWidget,
)

from ckpt_inspector.core.ops.session import LoadedFile
from ckpt_inspector.core.ops.torch_load import consent
from ckpt_inspector.core.summary import human_bytes
from ckpt_inspector.gui import theme
from ckpt_inspector.gui.checkpoint_view import CheckpointView
from ckpt_inspector.gui.commands import run_cli
from ckpt_inspector.gui.devices import DeviceProbe
from ckpt_inspector.gui.diff_view import DiffView
from ckpt_inspector.gui.errors import ErrorReporter
from ckpt_inspector.gui.export_dialog import ExportDialog
from ckpt_inspector.gui.file_browser import FileBrowser
from ckpt_inspector.gui.help_dialogs import ShortcutsDialog, about_box, about_html
from ckpt_inspector.gui.icons import app_icon, badge_icon, icon
from ckpt_inspector.gui.jobs import JobRunner
from ckpt_inspector.gui.tensor_view import preload_plots
from ckpt_inspector.gui.welcome import WelcomePage

VERDICT_WORDS = {"safe": "safe", "needs-trust": "needs trust", "dangerous": "dangerous",
                 "unreadable": "could not be read"}


def verdict_icon(verdict: str) -> QIcon:
    """A small badge for a tab: amber "!" for needs-trust, red "!" for dangerous, grey "?"
    for unreadable; nothing for safe (the close button keeps its own cross)."""
    colors = {"needs-trust": "#d97706", "dangerous": "#c62828", "unreadable": "#6b7280"}
    if verdict not in colors:
        return QIcon()
    return badge_icon(colors[verdict], "?" if verdict == "unreadable" else "!")


THEME_NAMES = {"system": "Follow the &system", "light": "&Light", "dark": "&Dark"}
FILE_FILTER = ("Checkpoints (*.pt *.pth *.ckpt *.bin *.pt2 *.onnx *.safetensors *.pkl);;"
               "All files (*)")
MAX_RECENT = 10
FILES_WIDTH = 220  # the Files panel, at first and after View > Reset layout


def make_demo() -> str:
    """Make (or find) the demo checkpoint."""
    return run_cli("demo").strip().splitlines()[-1]


def load_with_torch(path: str, device: str, flags: list[str]) -> dict[str, Any]:
    return json.loads(run_cli("load", path, "--device", device, "--json", *flags))


class MainWindow(QMainWindow):
    file_shown = Signal(str)  # a file's tree is on screen (benchmarks and tests wait on it)
    comparison_shown = Signal(object)  # a DiffView whose result is on screen

    def __init__(self, settings: QSettings | None = None, probe_devices: bool = True):
        super().__init__()
        self.settings = settings or QSettings()
        theme.controller().set_mode(theme.saved_mode(self.settings))
        self.setWindowTitle("ckpt-inspector")
        self.setWindowIcon(app_icon())
        self.setAcceptDrops(True)
        self.reporter = ErrorReporter(self)
        self.runner = JobRunner(lambda label, err: self.reporter.report(label, err), self)
        self.runner.changed.connect(self._tasks_changed)
        self.device = str(self.settings.value("device", "cpu"))
        self.devices: list[str] | None = None  # labels, once the child process has listed them
        self.devices_error = ""

        self.tabs = QTabWidget()
        self.tabs.setObjectName("tabs")
        self.tabs.setTabsClosable(True)
        self.tabs.setMovable(True)
        self.tabs.setDocumentMode(True)
        self.tabs.tabCloseRequested.connect(self.close_tab)
        self.tabs.currentChanged.connect(lambda _i: self._tab_changed())
        self.tabs.tabBar().setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.tabs.tabBar().customContextMenuRequested.connect(self._tab_menu)
        self.welcome = WelcomePage()
        self.welcome.open_requested.connect(self.open_dialog)
        self.welcome.demo_requested.connect(self.open_demo)
        self.welcome.recent_requested.connect(lambda p: self.open_paths([p]))
        self.pages = QStackedWidget()
        self.pages.addWidget(self.welcome)
        self.pages.addWidget(self.tabs)
        self.setCentralWidget(self.pages)

        self._build_browser()
        self._build_actions()
        self._build_toolbar()
        self._build_status()
        self._refresh_recent()
        self._tab_changed()
        self.restore_layout()

        self.probe = DeviceProbe(self)
        self.probe.found.connect(self._devices_found)
        self.probe.failed.connect(self._devices_failed)
        if probe_devices:
            self.probe.start()
        # pyqtgraph takes half a second to import: do it on a worker once the window is up
        QTimer.singleShot(300, self, lambda: preload_plots(self.runner))  # not once deleted

    # -- construction --------------------------------------------------------------------------
    def _build_browser(self) -> None:
        folder = str(self.settings.value("lastFolder", os.getcwd()))
        self.browser = FileBrowser(folder if os.path.isdir(folder) else os.getcwd())
        self.browser.file_activated.connect(lambda p: self.open_paths([p]))
        self.browser.folder_changed.connect(lambda f: self.settings.setValue("lastFolder", f))
        self.browser_dock = QDockWidget("Files", self)
        self.browser_dock.setObjectName("fileBrowserDock")
        self.browser_dock.setWidget(self.browser)
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, self.browser_dock)
        self.resizeDocks([self.browser_dock], [FILES_WIDTH], Qt.Orientation.Horizontal)

    def _action(self, name: str | None, text: str, slot: Any,
                shortcut: QKeySequence.StandardKey | str | None = None, tip: str = "",
                fallback: str = "") -> QAction:
        """An action with an icon from resources/icons (``name``), a shortcut (a standard key
        where the platform has one, else ``fallback``) and a tooltip that names it."""
        action = QAction(icon(name) if name else QIcon(), text, self)
        if isinstance(shortcut, QKeySequence.StandardKey):
            action.setShortcuts(shortcut)
        elif shortcut:
            action.setShortcut(QKeySequence(shortcut))
        if action.shortcut().isEmpty() and fallback:
            action.setShortcut(QKeySequence(fallback))
        keys = action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
        tip = tip or text.replace("&", "").rstrip("…")
        action.setToolTip(f"{tip} ({keys})" if keys else tip)
        action.triggered.connect(slot)
        return action

    def _build_actions(self) -> None:
        std = QKeySequence.StandardKey
        self.open_action = self._action("open", "&Open…", self.open_dialog, std.Open,
                                        "Open checkpoint files")
        self.demo_action = self._action(
            "demo", "Open &demo checkpoint", self.open_demo,
            tip="A resnet18 training checkpoint, made on this machine the first time")
        self.compare_action = self._action(
            "compare", "Co&mpare…", self.compare_dialog, "Ctrl+D",
            "Compare two checkpoints: keys, shapes, dtypes and values; Shift-drop a file to "
            "compare it with the current one")
        self.export_action = self._action(
            "export", "&Export…", self.export_current, "Ctrl+E",
            "Export to a state_dict, safetensors, TorchScript, ONNX or .pt2, verified")
        self.reload_action = self._action("reload", "&Reload", self.reload_current, std.Refresh,
                                          "Read the file again (or compare again)")
        self.close_action = self._action("close-tab", "&Close tab",
                                         lambda: self.close_tab(self.tabs.currentIndex()),
                                         std.Close)
        # Windows has no standard Quit key (Alt+F4 closes the window there)
        self.quit_action = self._action("quit", "&Quit", self.close, std.Quit,
                                        fallback="Ctrl+Q")
        self.copy_action = self._action(
            "copy", "&Copy keys", self._copy_keys, std.Copy,
            "Copy the keys of the selected rows")
        # Ctrl+C itself belongs to the focused widget (key tree: keys; values table: cells;
        # text: the selection): shown here, it never fires at the window level
        self.copy_action.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        self.find_action = self._action("find", "&Find…", self._focus_filter, std.Find,
                                        "Filter the keys of the current tab")
        self.torch_action = self._action(
            "device", "Load with &torch (weights only)…", self.load_current_with_torch,
            tip="Check that the file loads with torch.load onto the selected device")
        self.next_tab_action = self._action(None, "&Next tab", lambda: self._step_tab(1),
                                            std.NextChild)
        self.previous_tab_action = self._action(None, "&Previous tab",
                                                lambda: self._step_tab(-1), std.PreviousChild)
        self.reset_layout_action = self._action(None, "&Reset layout", self.reset_layout,
                                                tip="Put the Files panel back on the left")
        self.shortcuts_action = self._action("shortcuts", "&Keyboard shortcuts",
                                             self.show_shortcuts, std.HelpContents)
        self.about_action = self._action("about", "&About ckpt-inspector", self.about)

        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        file_menu.addAction(self.open_action)
        self.recent_menu = file_menu.addMenu("Open &Recent")
        self.recent_menu.aboutToShow.connect(self._refresh_recent)
        file_menu.addAction(self.demo_action)
        file_menu.addAction(self.compare_action)
        file_menu.addSeparator()
        file_menu.addAction(self.export_action)
        file_menu.addSeparator()
        file_menu.addAction(self.reload_action)
        file_menu.addAction(self.close_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        edit_menu = menu.addMenu("&Edit")
        edit_menu.addAction(self.copy_action)
        edit_menu.addAction(self.find_action)
        view_menu = menu.addMenu("&View")
        files_action = self.browser_dock.toggleViewAction()
        files_action.setIcon(icon("files"))
        files_action.setText("&Files panel")
        view_menu.addAction(files_action)
        view_menu.addAction(self.reset_layout_action)
        view_menu.addSeparator()
        view_menu.addAction(self.next_tab_action)
        view_menu.addAction(self.previous_tab_action)
        view_menu.addSeparator()
        self._build_theme_menu(view_menu)
        tools_menu = menu.addMenu("&Tools")
        tools_menu.addAction(self.torch_action)
        help_menu = menu.addMenu("&Help")
        help_menu.addAction(self.shortcuts_action)
        help_menu.addSeparator()
        help_menu.addAction(self.about_action)
        help_menu.addAction("About &Qt", QApplication.aboutQt)

    def _build_theme_menu(self, view_menu: QMenu) -> None:
        theme_menu = view_menu.addMenu(icon("theme"), "&Theme")
        self.theme_actions = QActionGroup(self)
        mode = theme.controller().mode
        for name, text in THEME_NAMES.items():
            action = theme_menu.addAction(text, lambda n=name: self.set_theme(n))
            action.setCheckable(True)
            action.setChecked(name == mode)
            action.setData(name)
            self.theme_actions.addAction(action)

    def set_theme(self, mode: str) -> None:
        """Light, dark, or the system's; kept in the settings."""
        theme.controller().set_mode(mode)
        self.settings.setValue(theme.SETTING, mode)
        for action in self.theme_actions.actions():
            action.setChecked(action.data() == mode)

    def _build_toolbar(self) -> None:
        bar = QToolBar("Main")
        bar.setObjectName("mainToolbar")
        bar.setMovable(False)
        bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        bar.setIconSize(QSize(20, 20))
        bar.addAction(self.open_action)
        bar.addAction(self.demo_action)
        bar.addAction(self.compare_action)
        bar.addAction(self.export_action)
        spacer = QWidget()
        spacer.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        bar.addWidget(spacer)
        label = QLabel("Device (map_location): ")
        bar.addWidget(label)
        self.device_box = QComboBox()
        self.device_box.setObjectName("deviceBox")
        self.device_box.setToolTip("Where tensors go when ckpt-inspector loads them with torch "
                                   "(map_location). Saved devices differ? The Device column "
                                   "shows 'cuda:0 → cpu'.")
        self.device_box.setMinimumContentsLength(18)
        self.device_box.addItem(self.device, self.device)
        self.device_box.currentIndexChanged.connect(self._device_changed)
        bar.addWidget(self.device_box)
        self.addToolBar(bar)

    def _build_status(self) -> None:
        self.file_label = QLabel()
        self.file_label.setObjectName("fileStatus")
        self.statusBar().addWidget(self.file_label, 1)
        self.task_label = QLabel()
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)
        self.progress.setMaximumWidth(160)
        self.progress.setMaximumHeight(14)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("cancelButton")
        self.cancel_button.clicked.connect(self.runner.cancel_all)
        for w in (self.task_label, self.progress, self.cancel_button):
            self.statusBar().addPermanentWidget(w)
            w.hide()

    # -- opening files -------------------------------------------------------------------------
    def open_dialog(self) -> None:
        paths = self.ask_open_paths()
        if paths:
            self.open_paths(paths)

    def ask_open_paths(self) -> list[str]:
        """The Open dialog, starting in the Files dock's folder."""
        return self._ask_files("Open checkpoints", QFileDialog.FileMode.ExistingFiles)

    def ask_compare_file(self, title: str) -> str:
        """One checkpoint for a comparison ("" if the user cancels)."""
        paths = self._ask_files(title, QFileDialog.FileMode.ExistingFile)
        return paths[0] if paths else ""

    def _ask_files(self, title: str, mode: QFileDialog.FileMode) -> list[str]:
        dialog = QFileDialog(self, title, self.browser.folder, FILE_FILTER)
        dialog.setFileMode(mode)
        dialog.setViewMode(QFileDialog.ViewMode.Detail)
        dialog.resize(900, 560)
        if dialog.exec():
            return dialog.selectedFiles()
        return []

    def open_paths(self, paths: list[str]) -> list[CheckpointView]:
        views = []
        for path in paths:
            path = os.path.abspath(path)
            existing = self._view_for(path)
            if existing is not None:
                self.tabs.setCurrentWidget(existing)
                views.append(existing)
                continue
            view = CheckpointView(path, self.runner, self.reporter, self.device)
            view.loaded.connect(lambda f, v=view: self._view_loaded(v, f))
            view.failed.connect(lambda _m, v=view: self._view_failed(v))
            index = self.tabs.addTab(view, os.path.basename(path))
            self.tabs.setTabToolTip(index, path)
            self.tabs.setCurrentIndex(index)
            self.pages.setCurrentWidget(self.tabs)
            view.start_loading()
            views.append(view)
        self._update_actions()
        return views

    # -- comparing files -------------------------------------------------------------------------
    def compare_dialog(self) -> DiffView | None:
        """Compare the current tab's file (or one asked for) with a file asked for."""
        view = self.current_view()
        first = view.path if view is not None else self.ask_compare_file(
            "Compare — choose the first checkpoint (A)")
        if not first:
            return None
        return self.compare_with(first)

    def compare_with(self, first: str) -> DiffView | None:
        second = self.ask_compare_file(f"Compare {os.path.basename(first)} (A) with… (B)")
        return self.compare_paths(first, second) if second else None

    def compare_paths(self, path_a: str, path_b: str) -> DiffView:
        """A tab comparing the two files (the open one if there is; it is not redone)."""
        path_a, path_b = os.path.abspath(path_a), os.path.abspath(path_b)
        for i in range(self.tabs.count()):
            existing = self.tabs.widget(i)
            if isinstance(existing, DiffView) and (existing.path_a, existing.path_b) == (
                    path_a, path_b):
                self.tabs.setCurrentWidget(existing)
                return existing
        view = DiffView(path_a, path_b, self.runner, self.reporter)
        view.shown.connect(lambda _c, v=view: self._comparison_shown(v))
        view.failed.connect(lambda _m, v=view: self._tab_changed())
        view.open_requested.connect(self.show_key_in_file)
        index = self.tabs.addTab(view, view.title)
        self.tabs.setTabToolTip(index, f"A: {path_a}\nB: {path_b}")
        self.tabs.setCurrentIndex(index)
        self.pages.setCurrentWidget(self.tabs)
        view.start()
        self._update_actions()
        return view

    def _comparison_shown(self, view: DiffView) -> None:
        index = self.tabs.indexOf(view)
        if index >= 0:
            self.tabs.setTabToolTip(index, f"A: {view.path_a}\nB: {view.path_b}\n"
                                           f"{view.status_text()}")
        self._tab_changed()
        self.comparison_shown.emit(view)

    def show_key_in_file(self, path: str, key: str) -> None:
        """Open ``path`` (or go to its tab) and select ``key`` once its tree is shown."""
        [view] = self.open_paths([path])
        if view.file is not None:
            view.select_key(key)
            return

        def loaded(_file: LoadedFile) -> None:
            view.loaded.disconnect(loaded)
            view.select_key(key)

        view.loaded.connect(loaded)

    def _tab_menu(self, pos: QPoint) -> None:
        index = self.tabs.tabBar().tabAt(pos)
        if index >= 0:
            self.tab_menu(index).exec(self.tabs.tabBar().mapToGlobal(pos))

    def tab_menu(self, index: int) -> QMenu:
        """The context menu of a tab: compare a file with another, compare again, close."""
        view = self.tabs.widget(index)
        menu = QMenu(self.tabs.tabBar())
        if isinstance(view, CheckpointView):
            menu.addAction("Compare with…", lambda: self.compare_with(view.path))
            others = [w for w in self._tab_widgets()
                      if isinstance(w, CheckpointView) and w is not view]
            if others:
                sub = menu.addMenu("Compare with open file")
                for other in others:
                    sub.addAction(os.path.basename(other.path),
                                  lambda o=other: self.compare_paths(view.path, o.path))
            menu.addSeparator()
        elif isinstance(view, DiffView):
            menu.addAction("Compare again", view.start)
            menu.addAction("Swap A and B", lambda: self.compare_paths(view.path_b, view.path_a))
            menu.addSeparator()
        menu.addAction("Close tab", lambda: self.close_tab(self.tabs.indexOf(view)))
        return menu

    def _view_for(self, path: str) -> CheckpointView | None:
        for i in range(self.tabs.count()):
            view = self.tabs.widget(i)
            if isinstance(view, CheckpointView) and view.path == path:
                return view
        return None

    def _view_loaded(self, view: CheckpointView, file: LoadedFile) -> None:
        index = self.tabs.indexOf(view)
        if index >= 0:
            self.tabs.setTabIcon(index, verdict_icon(file.report.verdict))
            self.tabs.setTabToolTip(index, f"{view.path}\n{VERDICT_WORDS[file.report.verdict]}")
        self._remember(view.path)
        self._tab_changed()
        self.file_shown.emit(view.path)

    def _view_failed(self, view: CheckpointView) -> None:
        index = self.tabs.indexOf(view)
        if index >= 0:
            self.tabs.setTabIcon(index, verdict_icon("unreadable"))
            self.tabs.setTabToolTip(index, f"{view.path}\ncould not be read")
        self._tab_changed()

    def open_demo(self) -> None:
        self.runner.run("Making the demo checkpoint (first time only)", make_demo,
                        on_result=lambda p: self.open_paths([p]))

    def reload_current(self) -> None:
        view = self.tabs.currentWidget()
        if isinstance(view, CheckpointView):
            view.start_loading()
        elif isinstance(view, DiffView):
            view.start()

    def close_tab(self, index: int) -> None:
        if index < 0:
            return
        view = self.tabs.widget(index)
        self.tabs.removeTab(index)
        if isinstance(view, (CheckpointView, DiffView)):
            view.dispose()
        if view is not None:
            view.deleteLater()
        if self.tabs.count() == 0:
            self._refresh_recent()
            self.pages.setCurrentWidget(self.welcome)
        self._tab_changed()

    def current_view(self) -> CheckpointView | None:
        view = self.tabs.currentWidget()
        return view if isinstance(view, CheckpointView) else None

    # -- drag and drop -------------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        """Files dropped open in tabs; with Shift held, a file is compared with the current
        tab's file (two files with each other)."""
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        paths = [p for p in paths if os.path.isfile(p)]
        if not paths:
            return
        event.acceptProposedAction()
        view = self.current_view()
        if event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            if len(paths) == 2:
                self.compare_paths(*paths)
                return
            if len(paths) == 1 and view is not None:
                self.compare_paths(view.path, paths[0])
                return
            self.statusBar().showMessage("Shift-drop compares one file with the current tab's, "
                                         "or two files with each other", 8000)
        self.open_paths(paths)

    # -- recent files --------------------------------------------------------------------------
    def recent_files(self) -> list[str]:
        value = self.settings.value("recentFiles", [])
        if isinstance(value, str):
            value = [value]
        return [str(p) for p in (value or [])]

    def _remember(self, path: str) -> None:
        recent = [p for p in self.recent_files() if p != path]
        recent.insert(0, path)
        self.settings.setValue("recentFiles", recent[:MAX_RECENT])
        self.settings.setValue("lastFolder", os.path.dirname(path))

    def _refresh_recent(self) -> None:
        recent = [p for p in self.recent_files() if os.path.exists(p)]
        self.recent_menu.clear()
        for path in recent:
            self.recent_menu.addAction(path, lambda p=path: self.open_paths([p]))
        if recent:
            self.recent_menu.addSeparator()
            self.recent_menu.addAction("Clear recent files", self._clear_recent)
        else:
            self.recent_menu.addAction("(none)").setEnabled(False)
        self.welcome.set_recent(recent)

    def _clear_recent(self) -> None:
        self.settings.setValue("recentFiles", [])
        self._refresh_recent()

    # -- devices -------------------------------------------------------------------------------
    def _devices_failed(self, message: str) -> None:
        self.devices_error = message
        self.statusBar().showMessage(f"torch devices unavailable ({message}); using cpu", 8000)

    def _devices_found(self, devices: list[dict[str, Any]]) -> None:
        self.devices = [d["label"] for d in devices]
        wanted = self.device
        self.device_box.blockSignals(True)
        self.device_box.clear()
        for d in devices:
            self.device_box.addItem(d["label"], d["id"])
        index = self.device_box.findData(wanted)
        if index < 0:
            index = 0
            if wanted != "cpu":
                self.statusBar().showMessage(f"{wanted} is not available here; using cpu", 8000)
        self.device_box.setCurrentIndex(index)
        self.device_box.blockSignals(False)
        self._device_changed(index)

    def _device_changed(self, index: int) -> None:
        device = self.device_box.itemData(index) or "cpu"
        self.device = device
        self.settings.setValue("device", device)
        for i in range(self.tabs.count()):
            view = self.tabs.widget(i)
            if isinstance(view, CheckpointView):
                view.set_target_device(device)

    # -- torch ---------------------------------------------------------------------------------
    def load_current_with_torch(self) -> None:
        """Load the current file with torch onto the chosen device, after asking for the
        trust its verdict calls for (the rules of core/ops/torch_load.py)."""
        view = self.current_view()
        if view is None or view.file is None:
            return
        flags = self._trust_flags(view)
        if flags is None:
            return
        device = self.device
        name = os.path.basename(view.path)
        self.runner.run(f"Loading {name} with torch onto {device}",
                        load_with_torch, view.path, device, flags,
                        on_result=lambda r: self.reporter.show(
                            "Loaded with torch",
                            f"{name} loaded onto {', '.join(r['devices']) or device} "
                            f"({r['mode']}): a {r['type']} holding {r['tensors']:,} tensors, "
                            f"{human_bytes(r['nbytes'])}, in {r['seconds']:.2f} s.",
                            icon=QMessageBox.Icon.Information),
                        on_error=lambda e: self.reporter.report("Not loaded", e, name))

    def export_current(self) -> ExportDialog | None:
        view = self.current_view()
        if view is None or view.file is None:
            return None
        dialog = ExportDialog(view.file, self.device, self)
        dialog.open_requested.connect(lambda p: self.open_paths([p]))
        dialog.open()
        self.export_dialog = dialog
        return dialog

    def _trust_flags(self, view: CheckpointView) -> list[str] | None:
        """The ``load`` flags the user agrees to (the core's consent rules), or None if they
        decline."""
        needed = consent(view.file.report, view.file.ckpt, os.path.basename(view.path))
        for q in needed.questions:
            if not self.confirm(q.title, q.text, q.accept):
                return None
        return list(needed.flags)

    def confirm(self, title: str, text: str, accept: str) -> bool:
        """Ask; the safe answer (Cancel) is the default."""
        box = QMessageBox(QMessageBox.Icon.Warning, title, text, QMessageBox.StandardButton.Cancel,
                          self)
        yes = box.addButton(accept, QMessageBox.ButtonRole.AcceptRole)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        return box.clickedButton() is yes

    # -- status, title, misc -------------------------------------------------------------------
    def _tasks_changed(self) -> None:
        tasks = self.runner.tasks
        busy = bool(tasks)
        for w in (self.task_label, self.progress, self.cancel_button):
            w.setVisible(busy)
        if busy:
            more = f" (+{len(tasks) - 1} more)" if len(tasks) > 1 else ""
            self.task_label.setText(tasks[-1].label + "…" + more)
            fraction = tasks[-1].fraction
            if fraction is None:
                self.progress.setRange(0, 0)  # busy, for work that cannot say how far it is
            else:
                self.progress.setRange(0, 1000)
                self.progress.setValue(int(fraction * 1000))

    def _tab_widgets(self) -> list[QWidget]:
        return [self.tabs.widget(i) for i in range(self.tabs.count())]

    def _tab_changed(self) -> None:
        """Title, status line, actions and the Files dock follow the current tab."""
        view = self.current_view()
        self.setWindowTitle(f"{os.path.basename(view.path)} — ckpt-inspector" if view
                            else "ckpt-inspector")
        text = ""
        diff = self.tabs.currentWidget()
        if isinstance(diff, DiffView):
            self.setWindowTitle(f"{diff.title} — ckpt-inspector")
            text = diff.status_text()
        if view is not None and view.file is not None:
            f = view.file
            n = f.totals["tensors"]
            text = (f"{f.ckpt.format} · {n:,} tensor{'s' if n != 1 else ''} · "
                    f"{human_bytes(f.totals['nbytes'])} · {VERDICT_WORDS[f.report.verdict]} · "
                    f"read in {f.seconds * 1000:,.0f} ms")
        self.file_label.setText(text)
        if view is not None:
            self.browser.show_file(view.path)
        self._update_actions()

    def _update_actions(self) -> None:
        view = self.current_view()
        loaded = view is not None and view.file is not None
        diff = self.tabs.currentWidget() if isinstance(self.tabs.currentWidget(),
                                                      DiffView) else None
        self.torch_action.setEnabled(loaded)
        self.export_action.setEnabled(loaded)
        self.copy_action.setEnabled(loaded or (diff is not None and diff.comparison is not None))
        self.reload_action.setEnabled(view is not None or diff is not None)
        self.close_action.setEnabled(view is not None or diff is not None)

    def _copy_keys(self) -> None:
        view = self.tabs.currentWidget()
        if isinstance(view, (CheckpointView, DiffView)):
            view.copy_keys()

    def _focus_filter(self) -> None:
        view = self.tabs.currentWidget()
        if isinstance(view, (CheckpointView, DiffView)):
            view.focus_filter()

    def _step_tab(self, step: int) -> None:
        if self.tabs.count():
            self.tabs.setCurrentIndex((self.tabs.currentIndex() + step) % self.tabs.count())

    def show_shortcuts(self) -> ShortcutsDialog:
        dialog = ShortcutsDialog(self.menuBar(), self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()
        return dialog

    def about_text(self) -> str:
        """The About box's text: versions (torch's from its metadata: importing it would
        freeze the window) and the devices the child process listed."""
        return about_html(self.devices, self.device, self.devices_error,
                          self.settings.fileName())

    def about(self) -> QMessageBox:
        box = about_box(self, self.about_text())
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()
        return box

    # -- settings ------------------------------------------------------------------------------
    def restore_layout(self) -> None:
        """Window size and place, and where the docks and toolbar are, as last closed."""
        geometry = self.settings.value("geometry")
        if geometry is None or not self.restoreGeometry(geometry):
            self.resize(1400, 860)
        state = self.settings.value("windowState")
        if state is not None:
            self.restoreState(state)

    def reset_layout(self) -> None:
        dock = self.browser_dock
        dock.setFloating(False)
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, dock)
        dock.show()
        self.resizeDocks([dock], [FILES_WIDTH], Qt.Orientation.Horizontal)

    def closeEvent(self, event: QCloseEvent) -> None:
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("windowState", self.saveState())
        self.settings.sync()
        self.runner.cancel_all()
        for view in self._tab_widgets():
            if isinstance(view, DiffView):
                view.dispose()  # its statistics run as quiet tasks: stop them too
        self.probe.stop()
        super().closeEvent(event)


def drop_urls(paths: list[str]) -> list[QUrl]:
    return [QUrl.fromLocalFile(os.path.abspath(p)) for p in paths]

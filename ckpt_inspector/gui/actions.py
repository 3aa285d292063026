"""The main window's actions, menus and toolbar: what the user can do, and its keys."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QAction, QActionGroup, QIcon, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QLabel,
    QMenu,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QStackedWidget,
    QTabWidget,
    QToolBar,
    QWidget,
)

from ckpt_inspector.core.layouts import is_checkpoint_folder
from ckpt_inspector.gui import theme
from ckpt_inspector.gui.check.view import CheckView
from ckpt_inspector.gui.devices import DeviceBox
from ckpt_inspector.gui.diff.view import DiffView
from ckpt_inspector.gui.dock_fit import DockYield
from ckpt_inspector.gui.file_browser import FileBrowser
from ckpt_inspector.gui.icons import icon
from ckpt_inspector.gui.jobs import Task
from ckpt_inspector.gui.remote import is_url, name_of
from ckpt_inspector.gui.settings import LAST_FOLDER
from ckpt_inspector.gui.tree.checkpoint_view import CheckpointView
from ckpt_inspector.gui.welcome import WelcomePage

if TYPE_CHECKING:
    from ckpt_inspector.gui.main_window import MainWindow

FILES_WIDTH = 220  # the Files panel, at first and after View > Reset layout
THEME_NAMES = {"system": "Follow the &system", "light": "&Light", "dark": "&Dark"}


def action(self: QWidget, name: str | None, text: str, slot: Any,
            shortcut: QKeySequence.StandardKey | str | None = None, tip: str = "",
            fallback: str = "") -> QAction:
    """An action with an icon from resources/icons (``name``), a shortcut (a standard key
    where the platform has one, else ``fallback``) and a tooltip that names it."""
    action = QAction(icon(name) if name else QIcon(), text, self)
    if isinstance(shortcut, QKeySequence.StandardKey):
        action.setShortcuts(as_written(QKeySequence.keyBindings(shortcut)))
    elif shortcut:
        action.setShortcut(QKeySequence(shortcut))
    if action.shortcut().isEmpty() and fallback:
        action.setShortcut(QKeySequence(fallback))
    keys = action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
    tip = tip or text.replace("&", "").rstrip("…")
    action.setToolTip(f"{tip} ({keys})" if keys else tip)
    action.triggered.connect(slot)
    return action


def as_written(keys: list[QKeySequence]) -> list[QKeySequence]:
    """Keys as people write them: a standard key's "Ctrl+Shift+Backtab" (what X11 sends for
    Ctrl+Shift+Tab) as "Ctrl+Shift+Tab", so that menus and Help › Keyboard shortcuts say the
    same; Qt's shortcut map tries Shift+Backtab as Shift+Tab, so the key still works."""
    out = []
    for key in keys:
        text = key.toString()
        if "Shift+" in text and text.endswith("Backtab"):
            key = QKeySequence(text.removesuffix("Backtab") + "Tab")
        out.append(key)
    return out


def build_actions(self: MainWindow) -> None:
    """The window's actions (as its attributes) and its menus."""
    std = QKeySequence.StandardKey
    self.open_action = action(self, "open", "&Open…", self.open_dialog, std.Open,
                                    "Open checkpoint files")
    self.open_folder_action = action(self, "open", "Open &Folder…", self.open_folder_dialog,
                                     "Ctrl+Shift+O",
                                     "Open a checkpoint made of many files (a sharded model's "
                                     "folder)")
    self.open_url_action = action(self, "open", "Open &URL…", self.open_url_dialog, "Ctrl+L",
                                  "Open a checkpoint file at an https://, s3://, gs:// or "
                                  "hf:// URL (only its structure is read)")
    self.demo_action = action(self,
        "demo", "Open &demo checkpoint", self.open_demo,
        tip="A resnet18 training checkpoint, made on this machine the first time")
    self.compare_action = action(self,
        "compare", "Co&mpare…", self.compare_dialog, "Ctrl+D",
        "Compare two checkpoints: keys, shapes, dtypes and values; Shift-drop a file to "
        "compare it with the current one")
    self.export_action = action(self,
        "export", "&Export…", self.export_current, "Ctrl+E",
        "Export to a state_dict, safetensors, TorchScript, ONNX or .pt2, verified")
    self.reload_action = action(self, "reload", "&Reload", self.reload_current, std.Refresh,
                                      "Read the file again (or compare again)")
    self.close_action = action(self, "close-tab", "&Close tab",
                                     lambda: self.close_tab(self.tabs.currentIndex()),
                                     std.Close)
    # Windows has no standard Quit key (Alt+F4 closes the window there)
    self.quit_action = action(self, "quit", "&Quit", self.close, std.Quit,
                                    fallback="Ctrl+Q")
    self.copy_action = action(self,
        "copy", "&Copy keys", self._copy_keys, std.Copy,
        "Copy the keys of the selected rows")
    # Ctrl+C itself belongs to the focused widget (key tree: keys; values table: cells;
    # text: the selection): shown here, it never fires at the window level
    self.copy_action.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
    self.find_action = action(self, "find", "&Find…", self._focus_filter, std.Find,
                                    "Filter the keys of the current tab")
    self.torch_action = action(self,
        "device", "Load with &torch (weights only)…", self.load_current_with_torch,
        tip="Check that the file loads with torch.load onto the selected device")
    self.check_action = action(self,
        "check", "Check against a &model…", self.check_dialog,
        tip="Will load_state_dict(strict=True) accept this checkpoint? Missing, unexpected "
            "and mismatched keys against a torchvision architecture, your builder or "
            "another open file, and the fix")
    self.next_tab_action = action(self, None, "&Next tab", lambda: self._step_tab(1),
                                        std.NextChild)
    self.previous_tab_action = action(self, None, "&Previous tab",
                                            lambda: self._step_tab(-1), std.PreviousChild)
    self.reset_layout_action = action(self, None, "&Reset layout", self.reset_layout,
                                            tip="Put the Files panel back on the left")
    self.shortcuts_action = action(self, "shortcuts", "&Keyboard shortcuts",
                                         self.show_shortcuts, std.HelpContents)
    self.about_action = action(self, "about", "&About ckpt-inspector", self.about)

    menu = self.menuBar()
    file_menu = menu.addMenu("&File")
    file_menu.addAction(self.open_action)
    file_menu.addAction(self.open_folder_action)
    file_menu.addAction(self.open_url_action)
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
    _build_theme_menu(self, view_menu)
    tools_menu = menu.addMenu("&Tools")
    tools_menu.addAction(self.torch_action)
    tools_menu.addAction(self.check_action)
    help_menu = menu.addMenu("&Help")
    help_menu.addAction(self.shortcuts_action)
    help_menu.addSeparator()
    help_menu.addAction(self.about_action)
    help_menu.addAction("About &Qt", QApplication.aboutQt)

def _build_theme_menu(self: MainWindow, view_menu: QMenu) -> None:
    theme_menu = view_menu.addMenu(icon("theme"), "&Theme")
    self.theme_actions = QActionGroup(self)
    mode = theme.controller().mode
    for name, text in THEME_NAMES.items():
        action = theme_menu.addAction(text, lambda n=name: self.set_theme(n))
        action.setCheckable(True)
        action.setChecked(name == mode)
        action.setData(name)
        self.theme_actions.addAction(action)


def build_toolbar(self: MainWindow) -> None:
    """The main toolbar: the file actions, then the device picker on the right."""
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
    self.device_box = DeviceBox()
    self.device_box.setObjectName("deviceBox")
    self.device_box.setToolTip("Where tensors go when ckpt-inspector loads them with torch "
                               "(map_location). Saved devices differ? The Device column "
                               "shows 'cuda:0 → cpu'. Opening this list asks torch (in a "
                               "child process) for the devices and their free memory.")
    self.device_box.setMinimumContentsLength(18)
    self.device_box.addItem(self.device, self.device)
    self.device_box.currentIndexChanged.connect(self._device_changed)
    bar.addWidget(self.device_box)
    self.addToolBar(bar)


def tab_menu(self: MainWindow, index: int) -> QMenu:
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
                sub.addAction(name_of(other.path),
                              lambda o=other: self.compare_paths(view.path, o.path))
        menu.addSeparator()
    elif isinstance(view, DiffView):
        menu.addAction("Compare again", view.start)
        menu.addAction("Swap A and B", lambda: self.compare_paths(view.path_b, view.path_a))
        menu.addSeparator()
    elif isinstance(view, CheckView):
        menu.addAction("Check again", view.start)
        menu.addSeparator()
    menu.addAction("Close tab", lambda: self.close_tab(self.tabs.indexOf(view)))
    return menu


def build_status(self: MainWindow) -> None:
    """The status bar: the file shown, then the running task, its progress and Cancel."""
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


def show_tasks(self: MainWindow, tasks: list[Task]) -> None:
    """The status bar's part for the running tasks: the last one's label and progress."""
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


def build_pages(self: MainWindow) -> None:
    """The central pages: the welcome page, and the tabs once a file is open."""
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


def build_browser(self: MainWindow) -> None:
    """The Files dock, in the folder last used."""
    folder = str(self.settings.value(LAST_FOLDER, os.getcwd()))
    self.browser = FileBrowser(folder if os.path.isdir(folder) else os.getcwd())
    self.browser.file_activated.connect(lambda p: self.open_paths([p]))
    self.browser.folder_changed.connect(lambda f: self.settings.setValue(LAST_FOLDER, f))
    self.browser_dock = QDockWidget("Files", self)
    self.browser_dock.setObjectName("fileBrowserDock")
    self.browser_dock.setWidget(self.browser)
    self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, self.browser_dock)
    self.resizeDocks([self.browser_dock], [FILES_WIDTH], Qt.Orientation.Horizontal)
    self.dock_yield = DockYield(self, self.browser_dock, FILES_WIDTH, self.settings)


def is_checkpoint_folder_quiet(path: str) -> bool:
    """Whether ``path`` is a folder some layout reads (False when it cannot be listed)."""
    try:
        return is_checkpoint_folder(path)
    except OSError:
        return False


def browse_folder(self: MainWindow, folder: str) -> None:
    """A folder that is no checkpoint: list it in the Files dock (shown if hidden) and say so
    in the status bar, so that its files can be opened from there."""
    self.browser.set_folder(folder)
    dock = self.browser_dock
    dock.show()
    dock.raise_()
    self.statusBar().showMessage(
        f"{os.path.basename(folder.rstrip(os.sep)) or folder} is a folder, not a checkpoint "
        "ckpt-inspector knows: its files are listed in the Files panel; double-click one to "
        "open it", 15000)


def update_actions(self: MainWindow) -> None:
    """Enable what makes sense for the current tab."""
    view = self.current_view()
    loaded = view is not None and view.file is not None
    diff = self.tabs.currentWidget() if isinstance(self.tabs.currentWidget(),
                                                  (DiffView, CheckView)) else None
    # torch.load reads a local file: a URL's checkpoint is looked at, not loaded
    self.torch_action.setEnabled(loaded and not is_url(view.path))
    self.export_action.setEnabled(loaded)
    self.check_action.setEnabled(loaded)
    self.copy_action.setEnabled(loaded or (isinstance(diff, DiffView) and diff.comparison
                                           is not None) or (isinstance(diff, CheckView)
                                                            and diff.report is not None))
    self.reload_action.setEnabled(view is not None or diff is not None)
    self.close_action.setEnabled(view is not None or diff is not None)

"""The main window: menus, toolbar with the device picker, tabs, file browser, status bar."""

from __future__ import annotations

import json
import os
from typing import Any

from PySide6.QtCore import QPoint, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import (
    QCloseEvent,
    QDragEnterEvent,
    QDragMoveEvent,
    QDropEvent,
)
from PySide6.QtWidgets import (
    QMainWindow,
    QMenu,
    QMessageBox,
    QWidget,
)

from ckpt_inspector.core.ops.check.request import CheckRequest
from ckpt_inspector.core.ops.session import LoadedFile
from ckpt_inspector.core.summary import human_bytes
from ckpt_inspector.gui import settings as settings_mod
from ckpt_inspector.gui import theme
from ckpt_inspector.gui.actions import (
    FILES_WIDTH,
    browse_folder,
    build_actions,
    build_browser,
    build_pages,
    build_status,
    build_toolbar,
    is_checkpoint_folder_quiet,
    show_tasks,
    tab_menu,
    update_actions,
)
from ckpt_inspector.gui.check.launch import ask_check, open_check
from ckpt_inspector.gui.check.view import CheckView
from ckpt_inspector.gui.commands import run_cli
from ckpt_inspector.gui.devices import LISTING, DeviceProbe, fill_device_box, show_listing
from ckpt_inspector.gui.dialogs.check import CheckDialog
from ckpt_inspector.gui.dialogs.consent import ask_consent, confirm
from ckpt_inspector.gui.dialogs.export import ExportDialog
from ckpt_inspector.gui.dialogs.files import ask_files, ask_folder
from ckpt_inspector.gui.dialogs.help import ShortcutsDialog, about_box, about_html
from ckpt_inspector.gui.dialogs.open_url import OpenUrlDialog
from ckpt_inspector.gui.diff.view import DiffView
from ckpt_inspector.gui.dropping import dropped_paths, take_as_copy
from ckpt_inspector.gui.errors import ErrorReporter
from ckpt_inspector.gui.icons import VERDICT_WORDS, app_icon, verdict_icon
from ckpt_inspector.gui.jobs import JobRunner
from ckpt_inspector.gui.remote import is_url, name_of, normalize, strip_credentials, transfer_text
from ckpt_inspector.gui.tensor.preload import preload_when_idle
from ckpt_inspector.gui.tree.checkpoint_view import CheckpointView
from ckpt_inspector.gui.whole_model_bar import offer_whole_model

IDLE_AFTER_MS = 500  # how often the window looks whether it is idle (no task running)


def make_demo() -> str:
    """Make (or find) the demo checkpoint."""
    return run_cli("demo").strip().splitlines()[-1]


def load_with_torch(path: str, device: str, flags: list[str]) -> dict[str, Any]:
    return json.loads(run_cli("load", path, "--device", device, "--json", *flags))


class MainWindow(QMainWindow):
    file_shown = Signal(str)  # a file's tree is on screen (benchmarks and tests wait on it)
    comparison_shown = Signal(object)  # a DiffView whose result is on screen
    check_done = Signal(object)  # a CheckView whose result is on screen

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
        self.device_list: list[dict[str, Any]] | None = None  # with their free memory
        self.devices_error = ""

        build_pages(self)
        build_browser(self)
        build_actions(self)
        build_toolbar(self)
        build_status(self)
        self._refresh_recent()
        self._tab_changed()
        self.restore_layout()

        # the devices are listed by a child process that imports torch (seconds, ~900 MB):
        # only when the user first opens the picker (``probe_devices``: whether it may)
        self.probe = DeviceProbe(self)
        self.probe.found.connect(self._devices_found)
        self.probe.failed.connect(self._devices_failed)
        self._may_probe = probe_devices
        self.device_box.opening.connect(self._device_picker_opening)
        # importing pyqtgraph (half a second on a worker) waits until no file is being
        # read: it would slow the read down while the user waits for the first tree
        QTimer.singleShot(IDLE_AFTER_MS, self, self._when_idle)  # not once deleted

    def _when_idle(self, was_busy: bool = False) -> None:
        """Start what waits for an idle window (see ``__init__``), or look again later: a
        whole period after the last task ended (a read's end is when its tree is laid out
        and painted, which an import on a worker would stall)."""
        if self.runner.tasks or was_busy:
            busy = bool(self.runner.tasks)
            QTimer.singleShot(IDLE_AFTER_MS, self, lambda: self._when_idle(busy))
            return
        preload_when_idle(self.runner)

    def set_theme(self, mode: str) -> None:
        """Light, dark, or the system's; kept in the settings."""
        theme.controller().set_mode(mode)
        self.settings.setValue(theme.SETTING, mode)
        for action in self.theme_actions.actions():
            action.setChecked(action.data() == mode)

    # -- opening files -------------------------------------------------------------------------
    def open_dialog(self) -> None:
        paths = self.ask_open_paths()
        if paths:
            self.open_paths(paths)

    def open_folder_dialog(self) -> None:
        folder = ask_folder(self, self.browser.folder, "Open a checkpoint folder")
        if folder:
            self.open_paths([folder])

    def open_url_dialog(self) -> OpenUrlDialog:
        """File > Open URL: the recent URLs to pick from or edit; Open opens it in a tab."""
        dialog = OpenUrlDialog(settings_mod.recent_urls(self.settings), self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.accepted.connect(lambda: self.open_paths([dialog.url()]))
        dialog.open()
        self.url_dialog = dialog
        return dialog

    def ask_open_paths(self) -> list[str]:
        """The Open dialog, starting in the Files dock's folder."""
        return ask_files(self, self.browser.folder, "Open checkpoints")

    def ask_compare_file(self, title: str) -> str:
        """One checkpoint for a comparison ("" if the user cancels)."""
        paths = ask_files(self, self.browser.folder, title, single=True)
        return paths[0] if paths else ""

    def open_paths(self, paths: list[str]) -> list[CheckpointView]:
        """A tab per file or checkpoint folder; a folder in no known layout is browsed in the
        Files dock instead (its files open from there)."""
        views = []
        for path in paths:
            path = normalize(path)
            if not is_url(path) and not is_checkpoint_folder_quiet(path) and \
                    os.path.isdir(path):
                browse_folder(self, path)
                continue
            existing = self._view_for(path)
            if existing is not None:
                self.tabs.setCurrentWidget(existing)
                views.append(existing)
                continue
            view = CheckpointView(path, self.runner, self.reporter, self.device)
            view.set_devices(self.device_list)
            view.loaded.connect(lambda f, v=view: self._view_loaded(v, f))
            view.failed.connect(lambda _m, v=view: self._view_failed(v))
            index = self.tabs.addTab(view, name_of(path))
            self.tabs.setTabToolTip(index, strip_credentials(path))
            self.tabs.setCurrentIndex(index)
            self.pages.setCurrentWidget(self.tabs)
            view.start_loading()
            offer_whole_model(self.runner, view, path, self._tab_widgets, self.open_paths)
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
        second = self.ask_compare_file(f"Compare {name_of(first)} (A) with… (B)")
        return self.compare_paths(first, second) if second else None

    def compare_paths(self, path_a: str, path_b: str) -> DiffView:
        """A tab comparing the two files (the open one if there is; it is not redone)."""
        path_a, path_b = normalize(path_a), normalize(path_b)
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

    # -- checking against a model ----------------------------------------------------------------
    def check_dialog(self) -> CheckDialog | None:
        """Tools > Check against a model…: the current tab's file against a model."""
        self.check_dialog_ = ask_check(self)
        return self.check_dialog_

    def check_request(self, request: CheckRequest) -> CheckView:
        return open_check(self, request)

    def check_shown(self, view: CheckView) -> None:
        index = self.tabs.indexOf(view)
        if index >= 0:
            self.tabs.setTabToolTip(index, f"{view.request.path}\nagainst "
                                           f"{view.request.model_label}\n{view.status_text()}")
        self._tab_changed()
        self.check_done.emit(view)

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
        return tab_menu(self, index)

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
            self.tabs.setTabToolTip(index, f"{strip_credentials(view.path)}\n"
                                           f"{VERDICT_WORDS[file.report.verdict]}")
        self._remember(view.path)
        self._tab_changed()
        self.file_shown.emit(view.path)

    def _view_failed(self, view: CheckpointView) -> None:
        index = self.tabs.indexOf(view)
        if index >= 0:
            self.tabs.setTabIcon(index, verdict_icon("unreadable"))
            self.tabs.setTabToolTip(index, f"{strip_credentials(view.path)}\ncould not be read")
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
        if isinstance(view, (CheckpointView, DiffView, CheckView)):
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
        if dropped_paths(event.mimeData()):
            take_as_copy(event)

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        # Shift (compare) proposes a move in file managers: answered at every step
        if dropped_paths(event.mimeData()):
            take_as_copy(event)

    def dropEvent(self, event: QDropEvent) -> None:
        """Files and URLs dropped open in tabs; with Shift held, a file is compared with the
        current tab's file (two files with each other)."""
        paths = dropped_paths(event.mimeData())
        if not paths or not take_as_copy(event):
            return
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

    # -- recent files and layout (kept in the settings) ------------------------------------------
    def recent_files(self) -> list[str]:
        return settings_mod.recent_files(self.settings)

    def _remember(self, path: str) -> None:
        if is_url(path):
            settings_mod.remember_url(self.settings, path)
        else:
            settings_mod.remember(self.settings, path)

    def _refresh_recent(self) -> None:
        recent = [p for p in self.recent_files() if not is_url(p) and os.path.exists(p)]
        urls = settings_mod.recent_urls(self.settings)
        self.recent_menu.clear()
        for path in recent:
            self.recent_menu.addAction(path, lambda p=path: self.open_paths([p]))
        if recent and urls:
            self.recent_menu.addSeparator()
        for url in urls:
            self.recent_menu.addAction(url, lambda u=url: self.open_paths([u]))
        if recent or urls:
            self.recent_menu.addSeparator()
            self.recent_menu.addAction("Clear recent files", self._clear_recent)
        else:
            self.recent_menu.addAction("(none)").setEnabled(False)
        self.welcome.set_recent(recent)

    def _clear_recent(self) -> None:
        settings_mod.clear_recent(self.settings)
        self._refresh_recent()

    def restore_layout(self) -> None:
        settings_mod.restore_layout(self, self.settings)

    def reset_layout(self) -> None:
        dock = self.browser_dock
        dock.setFloating(False)
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, dock)
        dock.show()
        self.dock_yield.reset(FILES_WIDTH)  # within what a narrow window leaves it

    # -- devices -------------------------------------------------------------------------------
    def _device_picker_opening(self) -> None:
        """The picker's first opening lists the devices (until then it holds the remembered
        choice alone), with a greyed row saying so while the child runs."""
        if self._may_probe and not self.probe.started:
            show_listing(self.device_box)
            self.probe.start()

    def _devices_failed(self, message: str) -> None:
        self.devices_error = message
        self.device_box.removeItem(self.device_box.findText(LISTING))
        self.statusBar().showMessage(f"torch devices unavailable ({message}); using cpu", 8000)

    def _devices_found(self, devices: list[dict[str, Any]]) -> None:
        self.devices = [d["label"] for d in devices]
        self.device_list = devices
        box = self.device_box
        index, note = fill_device_box(box, devices, self.device)
        box.refit_popup()  # when open: its new rows in full
        if note:
            self.statusBar().showMessage(note, 8000)
        self._device_changed(index)
        for view in self._tab_widgets():
            if isinstance(view, CheckpointView):
                view.set_devices(devices)

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
        name = name_of(view.path)
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
        dialog = ExportDialog(view.file, self.device, self,
                              settings_mod.export_folder(self.settings))
        dialog.open_requested.connect(lambda p: self.open_paths([p]))
        dialog.finished.connect(lambda _r: self._exported(dialog))
        dialog.open()
        self.export_dialog = dialog
        return dialog

    def _exported(self, dialog: ExportDialog) -> None:
        """The folder an export was written to: where the next export of a remote file goes."""
        result = dialog.result
        if result is not None and result.written and result.path:
            folder = result.path if os.path.isdir(result.path) else os.path.dirname(result.path)
            self.settings.setValue(settings_mod.LAST_EXPORT_FOLDER, folder)

    def _trust_flags(self, view: CheckpointView) -> list[str] | None:
        """The ``load`` flags the user agrees to, or None if they decline."""
        return ask_consent(self.confirm, view.file.report, view.file.ckpt,
                           name_of(view.path))

    def confirm(self, title: str, text: str, accept: str) -> bool:
        return confirm(self, title, text, accept)

    # -- status, title, misc -------------------------------------------------------------------
    def _tasks_changed(self) -> None:
        show_tasks(self, self.runner.tasks)
        view = self.current_view()
        if view is not None and view.file is not None and is_url(view.path):
            self.file_label.setText(self._status_text(view))  # what it has fetched so far

    @staticmethod
    def _status_text(view: CheckpointView) -> str:
        f = view.file
        n = f.totals["tensors"]
        text = (f"{f.ckpt.format} · {n:,} tensor{'s' if n != 1 else ''} · "
                f"{human_bytes(f.totals['nbytes'])} · {VERDICT_WORDS[f.report.verdict]} · "
                f"read in {f.seconds * 1000:,.0f} ms")
        remote = transfer_text(f.ckpt)
        return f"{text} · {remote}" if remote else text

    def _tab_widgets(self) -> list[QWidget]:
        return [self.tabs.widget(i) for i in range(self.tabs.count())]

    def _tab_changed(self) -> None:
        """Title, status line, actions and the Files dock follow the current tab."""
        view = self.current_view()
        self.setWindowTitle(f"{name_of(view.path)} — ckpt-inspector" if view
                            else "ckpt-inspector")
        text = ""
        diff = self.tabs.currentWidget()
        if isinstance(diff, (DiffView, CheckView)):
            self.setWindowTitle(f"{diff.title} — ckpt-inspector")
            text = diff.status_text()
        if view is not None and view.file is not None:
            text = self._status_text(view)
        self.file_label.setText(text)
        if view is not None:
            self.browser.show_file("" if is_url(view.path) else view.path)
        self._update_actions()

    def _update_actions(self) -> None:
        update_actions(self)

    def _copy_keys(self) -> None:
        view = self.tabs.currentWidget()
        if isinstance(view, (CheckpointView, DiffView, CheckView)):
            view.copy_keys()

    def _focus_filter(self) -> None:
        view = self.tabs.currentWidget()
        if isinstance(view, (CheckpointView, DiffView, CheckView)):
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
                          self.settings.fileName(), asked=self.probe.started)

    def about(self) -> QMessageBox:
        box = about_box(self, self.about_text())
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()
        return box

    def closeEvent(self, event: QCloseEvent) -> None:
        settings_mod.save_layout(self, self.settings)
        self.runner.cancel_all()
        for view in self._tab_widgets():
            if isinstance(view, DiffView):
                view.dispose()  # its statistics run as quiet tasks: stop them too
        self.probe.stop()
        super().closeEvent(event)

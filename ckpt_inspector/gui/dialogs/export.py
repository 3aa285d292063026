"""File > Export: choose what and how (:mod:`.export_options`), watch it run, read the
verification figures.

The dialog runs ``ckpt-inspector export`` with the options page's
:class:`~ckpt_inspector.core.ops.export.request.ExportRequest` as a child process (torch
never loads into the window's process), reading its progress lines with
:func:`~ckpt_inspector.core.progress.parse_line` and its result as an
:class:`~ckpt_inspector.core.ops.export.result.ExportResult`; Cancel stops it and
removes its partial output.
"""

from __future__ import annotations

import os
import shlex
from html import escape
from typing import Any

from PySide6.QtCore import QProcess, QSize, Qt, Signal
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QStackedWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from ckpt_inspector.core.errors import ExportError
from ckpt_inspector.core.io.atomic import remove_partial
from ckpt_inspector.core.ops.export.names import name_warning
from ckpt_inspector.core.ops.export.request import ExportRequest
from ckpt_inspector.core.ops.export.result import ExportResult, Row
from ckpt_inspector.core.ops.session import LoadedFile
from ckpt_inspector.core.progress import Progress, parse_line
from ckpt_inspector.gui.commands import cli_command
from ckpt_inspector.gui.dialogs.export_options import ExportOptions
from ckpt_inspector.gui.remote import is_url, name_of
from ckpt_inspector.gui.theme import color, span


class ExportDialog(QDialog):
    open_requested = Signal(str)

    def __init__(self, file: LoadedFile, device: str, parent: QWidget | None = None,
                 local_folder: str = ""):
        super().__init__(parent)
        self.file = file
        self.device = device
        self.process: QProcess | None = None
        self.result: ExportResult | None = None
        self.request: ExportRequest | None = None
        self._options_size: QSize | None = None  # the dialog's size before the result page
        self._stdout = b""
        self.setWindowTitle(f"Export {name_of(file.path)}")
        self._fit_screen()
        self.pages = QStackedWidget()
        self.options = ExportOptions(file, device, local_folder=local_folder)
        self.options.export_requested.connect(self.start)
        self.options.close_requested.connect(self.reject)
        self.pages.addWidget(self.options)
        self.pages.addWidget(self._progress_page())
        self.pages.addWidget(self._result_page())
        layout = QVBoxLayout(self)
        layout.addWidget(self.pages)

    def _fit_screen(self) -> None:
        """1280×720 where the screen has room (the key preview takes the width), else what it
        has (a 1024×700 laptop)."""
        screen = self.screen().availableGeometry()
        width, height = min(1280, screen.width() - 24), min(720, screen.height() - 48)
        self.setMinimumSize(min(900, width), min(600, height))
        self.resize(width, height)

    # -- running -------------------------------------------------------------------------------
    def command(self, request: ExportRequest) -> list[str]:
        return cli_command(*request.to_argv(), "--progress")

    def start(self) -> None:
        out = self.options.output_edit.text().strip()
        if not out:
            return
        problem = self._output_problem(out)
        if problem:
            QMessageBox.warning(self, "Export", problem)
            return
        try:
            request = self.options.request()
        except ExportError as err:
            QMessageBox.warning(self, "Export", str(err))
            return
        mismatch = name_warning(request.to, out)
        if mismatch and not self.ask_mismatch(mismatch):
            return
        if os.path.exists(out) and not _empty_folder(out):
            if not self.ask_overwrite(out):
                return
            request.overwrite = True
        cmd = self.command(request)
        self.request = request
        self._stdout = b""
        self.result = None
        self.stage_label.setText("Starting…")
        self.bar.setRange(0, 0)
        self.pages.setCurrentIndex(1)
        self.process = QProcess(self)
        self.process.readyReadStandardOutput.connect(self._read)
        self.process.finished.connect(self._finished)
        self.process.start(cmd[0], cmd[1:])

    def _output_problem(self, out: str) -> str:
        """Why ``out`` cannot be the export's target ("" if it can): the source itself, or,
        for a folder, one that holds the source."""
        if is_url(self.file.path):
            return ""  # a remote checkpoint: a local export never replaces it
        out, source = os.path.abspath(out), os.path.abspath(self.file.path)
        if out == source:
            return ("The export would replace the checkpoint it comes from: choose another "
                    "name.")
        if self.options.writes_folder:
            sources = [source] + [os.path.join(os.path.dirname(source)
                                               if os.path.isfile(source) else source,
                                               str(f.get("path", "")))
                                  for f in self.file.ckpt.files]
            if any(_inside(p, out) for p in sources):
                return ("The export folder would hold or replace the checkpoint it comes "
                        "from: choose a folder outside it.")
        return ""

    def ask_mismatch(self, warning: str) -> bool:
        """Whether to export under a name that says another format."""
        answer = QMessageBox.question(self, "Export under this name?",
                                      f"{warning}.\n\nExport under this name anyway?",
                                      QMessageBox.StandardButton.Yes
                                      | QMessageBox.StandardButton.Cancel,
                                      QMessageBox.StandardButton.Cancel)
        return answer == QMessageBox.StandardButton.Yes

    def ask_overwrite(self, path: str) -> bool:
        what = "folder" if os.path.isdir(path) else "file"
        text = (f"The folder {os.path.basename(path)} is not empty. Replace the sharded "
                "model it holds?" if what == "folder" else
                f"{os.path.basename(path)} exists. Replace it?")
        answer = QMessageBox.question(self, f"Replace {what}?", text,
                                      QMessageBox.StandardButton.Yes
                                      | QMessageBox.StandardButton.Cancel,
                                      QMessageBox.StandardButton.Cancel)
        return answer == QMessageBox.StandardButton.Yes

    def _read(self) -> None:
        self._stdout += bytes(self.process.readAllStandardOutput())
        *lines, self._stdout = self._stdout.split(b"\n")
        for line in lines:
            message = parse_line(line)
            if isinstance(message, Progress):
                self._show_progress(message)
            elif isinstance(message, dict) and message.get("event") == "result":
                self.result = ExportResult.from_json(message)

    def _show_progress(self, report: Progress) -> None:
        if report.total:
            scale = max(1, report.total // 1_000_000)
            self.bar.setRange(0, report.total // scale)
            self.bar.setValue(report.done // scale)
        self.stage_label.setText(f"{report.stage.capitalize()}… {escape(report.detail)}")

    def _finished(self, code: int, _status: Any) -> None:
        self._read()
        if self._stdout.strip():
            self._stdout += b"\n"
            self._read()
        err = bytes(self.process.readAllStandardError()).decode("utf-8", "replace").strip()
        self.process = None
        self.show_result(code, err)

    def cancel(self) -> None:
        if self.process is not None:
            process = self.process
            process.finished.disconnect(self._finished)
            process.terminate()  # SIGTERM: the command removes its temporary files
            if not process.waitForFinished(5000):
                process.kill()
                process.waitForFinished(5000)
            self.process = None
        self._remove_partial()
        self.pages.setCurrentIndex(0)

    def _remove_partial(self) -> None:
        """What a killed export leaves beside its output."""
        remove_partial(self.options.output_edit.text().strip())

    # -- pages 2 and 3 ---------------------------------------------------------------------------
    def _progress_page(self) -> QWidget:
        page = QWidget()
        self.stage_label = QLabel()
        self.stage_label.setObjectName("stageLabel")
        self.bar = QProgressBar()
        cancel = QPushButton("Cancel")
        cancel.setObjectName("exportCancel")
        cancel.clicked.connect(self.cancel)
        layout = QVBoxLayout(page)
        layout.addStretch(1)
        layout.addWidget(self.stage_label)
        layout.addWidget(self.bar)
        layout.addWidget(cancel, 0, Qt.AlignmentFlag.AlignRight)
        layout.addStretch(2)
        return page

    def _result_page(self) -> QWidget:
        """The figures, the same export as a command line, and what to do next; the
        dialog fits it (:meth:`_fit_result`) rather than keep the options page's size."""
        page = QWidget()
        self.result_view = QTextBrowser()
        self.result_view.setObjectName("resultView")
        self.result_view.setFrameShape(QFrame.Shape.NoFrame)
        self.command_edit = QLineEdit()
        self.command_edit.setObjectName("exportCommand")
        self.command_edit.setReadOnly(True)
        self.command_edit.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.command_edit.setToolTip("The same export from a shell or a script")
        copy = QPushButton("Copy")
        copy.setToolTip("Copy the command line")
        copy.clicked.connect(lambda: QGuiApplication.clipboard().setText(
            self.command_edit.text()))
        command = QHBoxLayout()
        command.addWidget(QLabel("Command line:"))
        command.addWidget(self.command_edit, 1)
        command.addWidget(copy)
        self.open_button = QPushButton("Open exported file")
        self.open_button.setObjectName("openExported")
        self.open_button.clicked.connect(self._open_exported)
        back = QPushButton("Export another")
        back.clicked.connect(self._export_another)
        close = QPushButton("Close")
        close.clicked.connect(self.accept)
        buttons = QHBoxLayout()
        buttons.addWidget(back)
        buttons.addStretch(1)
        buttons.addWidget(self.open_button)
        buttons.addWidget(close)
        layout = QVBoxLayout(page)
        layout.addWidget(self.result_view, 1)
        layout.addLayout(command)
        layout.addLayout(buttons)
        return page

    def _show_page(self, index: int) -> None:
        """Show a page; the others' sizes no longer hold the dialog up (a stack is as large
        as its largest page), so that the dialog can fit the page shown."""
        for i in range(self.pages.count()):
            policy = QSizePolicy.Policy.Preferred if i == index else \
                QSizePolicy.Policy.Ignored
            self.pages.widget(i).setSizePolicy(policy, policy)
        self.pages.setCurrentIndex(index)

    def _fit_result(self) -> None:
        """The result page as tall as its text (within the screen), the dialog too."""
        if self._options_size is None:
            self._options_size = self.size()
        view = self.result_view
        view.document().setTextWidth(max(view.viewport().width(), self.width() - 60))
        text = int(view.document().size().height()) + 2 * view.frameWidth() + 8
        screen = self.screen().availableGeometry().height() - 200
        view.setFixedHeight(min(text, screen))
        self.setMinimumSize(min(600, self.minimumWidth()), 0)
        self._show_page(2)
        self.resize(self.width(), self.sizeHint().height())

    def _export_another(self) -> None:
        """Back to the options, at the size they had."""
        self._show_page(0)
        if self._options_size is not None:
            self._fit_screen()
            self.resize(self._options_size)
            self._options_size = None

    def show_result(self, code: int, err: str) -> None:
        r = self.result
        self.command_edit.setText(
            shlex.join(["ckpt-inspector", *self.request.to_argv()]) if self.request else "")
        self.command_edit.setCursorPosition(0)
        if r is None:
            self.open_button.setEnabled(False)
            self.result_view.setHtml(f"<h3 style='color:{color('danger')}'>Export failed</h3>"
                                     f"<p>{escape(err.splitlines()[-1] if err else f'exit {code}')}"
                                     "</p>")
            self._fit_result()
            return
        self.open_button.setEnabled(r.written and os.path.exists(r.path))
        self.open_button.setText("Open exported model" if os.path.isdir(r.path)
                                 else "Open exported file")
        table = "".join(f"<tr><th align='left' style='padding-right:12px'>{escape(row.label)}"
                        f"</th><td>{_cell(row)}</td></tr>" for row in r.rows())
        self.result_view.setHtml(f"{_heading(r)}<table>{table}</table>")
        self._fit_result()

    def _open_exported(self) -> None:
        """Close the dialog, then open what was exported in a tab: a tab opened while the
        dialog is still up would open behind it."""
        if self.result and self.result.path:
            self.accept()
            self.open_requested.emit(self.result.path)

    def reject(self) -> None:
        if self.process is not None:
            self.cancel()
        super().reject()


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies under it."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _empty_folder(path: str) -> bool:
    try:
        return os.path.isdir(path) and not os.listdir(path)
    except OSError:
        return False


def _cell(row: Row) -> str:
    text = escape(row.value)
    return span(row.level, text) if row.level else text


def _heading(r: ExportResult) -> str:
    """What became of the export, in a heading (and a line under it)."""
    if r.status == "passed":
        return f"<h3 style='color:{color('ok')}'>Exported and verified</h3>"
    if r.status == "not verified":
        return (f"<h3 style='color:{color('warning')}'>Exported, not verified</h3><p>"
                + escape(str(r.onnxruntime or "the export was not checked")) + "</p>")
    if r.written:
        return f"<h3 style='color:{color('danger')}'>Exported, but the verification failed</h3>"
    return (f"<h3 style='color:{color('danger')}'>The verification failed: nothing was written"
            "</h3><p>Any file already at that name is unchanged.</p>")

"""Tools > Check against a model…: the dialog (torchvision's names listed by a child
process, once per session), then the check's tab."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ckpt_inspector.core.ops.check.request import CheckRequest
from ckpt_inspector.core.ops.export.plan import sources
from ckpt_inspector.gui.check.view import CheckView
from ckpt_inspector.gui.dialogs.check import CheckDialog
from ckpt_inspector.gui.tree.checkpoint_view import CheckpointView

if TYPE_CHECKING:
    from ckpt_inspector.gui.main_window import MainWindow

LAST_ARCH = "check/arch"
_arch_names: list[str] = []  # torchvision's, once listed (they change only with it)


def ask_check(window: MainWindow) -> CheckDialog | None:
    """The dialog for the current tab's file; accepted, it opens the check's tab."""
    view = window.current_view()
    if view is None or view.file is None:
        return None
    others = [w.path for w in window._tab_widgets()
              if isinstance(w, CheckpointView) and w is not view and w.file is not None]
    dialog = CheckDialog(view.path, sources(view.file.ckpt), others,
                         str(window.settings.value(LAST_ARCH, "")), window)
    dialog.accepted.connect(lambda: _accepted(window, dialog))
    if _arch_names:
        dialog.set_arch_names(_arch_names)
    else:  # quiet: the window's Cancel does not see it, so the dialog stops it
        task = window.runner.run_child(
            "Listing torchvision's architectures", ["check", "--list-arch", "--json"],
            quiet=True, on_result=lambda r: _listed(dialog, r),
            on_error=lambda e: dialog.arch_list_failed(str(e)))
        dialog.finished.connect(lambda _r: task.cancelled or window.runner.cancel(task))
    dialog.open()
    return dialog


def _listed(dialog: CheckDialog, result: dict[str, Any]) -> None:
    if not dialog.isVisible():
        return
    _arch_names[:] = [str(n) for n in result.get("architectures", [])]
    dialog.set_arch_names(_arch_names)


def _accepted(window: MainWindow, dialog: CheckDialog) -> None:
    request = dialog.request()
    if request.arch:
        window.settings.setValue(LAST_ARCH, request.arch)
    open_check(window, request)


def open_check(window: MainWindow, request: CheckRequest) -> CheckView:
    """A tab with the check (the open one for the same request: it is not redone)."""
    for w in window._tab_widgets():
        if isinstance(w, CheckView) and w.request == request:
            window.tabs.setCurrentWidget(w)
            return w
    view = CheckView(request, window.runner, window.reporter)
    view.shown.connect(lambda _r, v=view: window.check_shown(v))
    view.failed.connect(lambda _m: window._tab_changed())
    view.open_requested.connect(window.show_key_in_file)
    index = window.tabs.addTab(view, view.title)
    window.tabs.setTabToolTip(index, f"{request.path}\nagainst {request.model_label}")
    window.tabs.setCurrentIndex(index)
    window.pages.setCurrentWidget(window.tabs)
    view.start()
    window._update_actions()
    return view

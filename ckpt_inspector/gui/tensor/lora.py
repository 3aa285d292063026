"""The tensor view's "Effective update" button: for a tensor of a LoRA pair (lora_A / lora_B,
lora_down / lora_up), show the pair's update ``scale · B @ A`` in its place, with the same
statistics, histogram, heatmap and values as any tensor.

Nothing is computed until the button is pressed. The update is then computed on a worker
(:func:`~ckpt_inspector.core.adapters.prepare`, cancellable, with its progress in the view's
status) and kept, so the views index it at once; its statistics follow as any tensor's. The
button stays pressed from one selection to the next: selecting another tensor of a pair then
shows that pair's update.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QToolButton

from ckpt_inspector.core.adapters import AdaptedModule, Adapter, short
from ckpt_inspector.core.adapters.update import prepare
from ckpt_inspector.core.progress import Progress
from ckpt_inspector.core.tree import TensorInfo
from ckpt_inspector.gui.theme import span

if TYPE_CHECKING:
    from ckpt_inspector.gui.jobs import JobRunner, Task
    from ckpt_inspector.gui.tensor.view import TensorView

TIP = ("Show the effective update scale · B @ A of this LoRA pair (rank {rank}, alpha "
       "{alpha}, scale {scale}) instead of the tensor: its statistics, histogram, heatmap "
       "and values, computed when asked")


def update_key(module: AdaptedModule) -> str:
    """What the view's title calls the update (what it is first: a long name is cut)."""
    return f"{short(module.scale)}·B@A of {module.name}"


class UpdateSwitch(QObject):
    """Owns the button; the view asks :meth:`selected` for each tensor it is given."""

    def __init__(self, view: TensorView, runner: JobRunner):
        super().__init__(view)
        self.view = view
        self.runner = runner
        self.adapter: Adapter | None = None
        self.button = QToolButton()
        self.button.setObjectName("loraUpdate")
        self.button.setText("Effective update")
        self.button.setCheckable(True)
        self.button.hide()
        self.button.toggled.connect(self._toggled)
        self._selected: tuple[str, TensorInfo] | None = None
        self._job: Task | None = None

    def set_adapter(self, adapter: Adapter | None) -> None:
        """A file was read: its pairs (None when it has none)."""
        self.cancel()
        self.adapter = adapter
        self._selected = None
        self.button.hide()

    def module(self, info: TensorInfo | None) -> AdaptedModule | None:
        return self.adapter.module_of(info) if self.adapter is not None else None

    def update_of(self, info: TensorInfo | None) -> TensorInfo | None:
        """The effective update of the pair ``info`` belongs to (not computed: a tensor
        whose elements are computed when read), or None."""
        module = self.module(info)
        if module is None or module.problem is not None:
            return None
        assert self.adapter is not None
        return self.adapter.update_tensor(module)

    def selected(self, key: str, info: TensorInfo | None) -> bool:
        """The tensor ``info`` (None: no tensor) is selected. True when the view shows its
        pair's update instead (now, or once computed)."""
        module = self.module(info)
        if module is not None and self._selected == (key, info) and \
                self.button.isChecked() and (self._job is not None or self.view.info is
                                             self.update_of(info)):
            return True  # the same row again (a filter, a theme): already shown or coming
        self.cancel()
        self._selected = (key, info) if module is not None and info is not None else None
        self.button.setVisible(module is not None)
        if module is None:
            return False
        self.button.setEnabled(module.problem is None)
        self.button.setToolTip(module.problem or TIP.format(
            rank=module.rank, alpha=short(module.alpha), scale=short(module.scale)))
        if module.problem is not None or not self.button.isChecked():
            return False
        self._show_update(module)
        return True

    def _toggled(self, on: bool) -> None:
        if self._selected is None:
            return
        key, info = self._selected
        module = self.module(info)
        if on and module is not None and module.problem is None:
            self._show_update(module)
        else:
            self.cancel()
            self.view.show_tensor(key, info)

    def _show_update(self, module: AdaptedModule) -> None:
        assert self.adapter is not None
        update = self.adapter.update_tensor(module)
        key = update_key(module)
        if update.storage.source.ready:
            self.view.show_tensor(key, update)
            return
        self.view.show_message(f"Computing the effective update of {module.name}…")
        self.view._busy("computing the update…")
        self._job = self.runner.run(
            f"Effective update of {module.name}", prepare, update, quiet=True,
            cancellable=True, on_result=lambda info: self._ready(key, info),
            on_progress=self._progress, on_error=self._failed)

    def _progress(self, p: Any) -> None:
        if isinstance(p, Progress) and p.total and self._job is not None:
            self.view._busy(f"computing the update {100 * p.done // p.total}%")

    def _ready(self, key: str, info: TensorInfo) -> None:
        if self._job is None:
            return  # cancelled meanwhile
        self._job = None
        self.view.show_tensor(key, info)

    def _failed(self, err: BaseException) -> None:
        if self._job is None:
            return
        self._job = None
        self.view.cancel_button.hide()
        self.view.status.setText(span("danger", escape(str(err) or type(err).__name__)))

    def cancel(self) -> bool:
        """Stop computing an update; True when one was being computed."""
        job, self._job = self._job, None
        if job is not None:
            self.runner.cancel(job)
        return job is not None

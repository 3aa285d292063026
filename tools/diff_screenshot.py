"""A screenshot of a comparison in the real window, for the README and for looking at changes.

    DISPLAY=:99 .venv/bin/python tools/diff_screenshot.py OUT.png [--size WxH] [--grouped]
        [--filter all|changed|missing|shape] [A B] [--key KEY]

Without A and B, makes a torchvision resnet18 state_dict (random weights) and a
fine-tuned copy in a temporary folder: layer3 and layer4 weights nudged by 5% of their
spread, their batch norms moved on, and a new 10-class head (fc changes shape). Compares
them through File > Compare, selects KEY (default: the largest change that has a
histogram of A − B) and saves ``window.grab()`` once its histogram is drawn.
docs/screenshot-diff.png is ``tools/diff_screenshot.py docs/screenshot-diff.png --key
layer4.1.conv2.weight``.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from PySide6.QtCore import QSettings, QTimer
from PySide6.QtWidgets import QApplication

from ckpt_inspector.core.ops.difftree import histogram_reason
from ckpt_inspector.gui.diff.model import FILTERS
from ckpt_inspector.gui.main_window import MainWindow


def make_pair(folder: str) -> tuple[str, str]:
    """resnet18's state_dict and a fine-tuned copy of it."""
    import torch
    import torchvision

    torch.manual_seed(0)
    sd = torchvision.models.resnet18(weights=None).state_dict()
    for key, t in sd.items():  # as if trained: batch norms have seen batches and learned
        if key.endswith("num_batches_tracked"):
            t.fill_(50_000)
        elif key.endswith(("bias", "running_mean")):
            t.copy_(0.1 * torch.randn_like(t))
        elif t.dim() == 1:  # batch-norm scales, running variances
            t.copy_(1 + 0.1 * torch.rand_like(t))
    tuned = {}
    for key, t in sd.items():
        t = t.clone()
        if key.startswith(("layer3.", "layer4.")):
            if key.endswith("num_batches_tracked"):
                t += 1200
            elif key.endswith("running_var"):
                t *= 1 + 0.02 * torch.rand_like(t)
            elif key.endswith("running_mean"):
                t += 0.002 * torch.randn_like(t)
            elif t.dim() >= 2:  # conv weights: 5% of their spread
                t += 0.05 * t.std() * torch.randn_like(t)
            elif t.is_floating_point():  # batch-norm scales and shifts
                t += 0.002 * torch.randn_like(t)
        tuned[key] = t
    tuned["fc.weight"] = torch.randn(10, 512) * 0.04
    tuned["fc.bias"] = torch.zeros(10)
    a, b = os.path.join(folder, "resnet18.pt"), os.path.join(folder, "resnet18-finetuned.pt")
    torch.save(sd, a)
    torch.save(tuned, b)
    return a, b


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("files", nargs="*")
    parser.add_argument("--size", default="1500x900")
    parser.add_argument("--key", default="")
    parser.add_argument("--grouped", action="store_true")
    parser.add_argument("--filter", default="all",
                        choices=[f[0].split()[0].lower() for f in FILTERS])
    args = parser.parse_args()
    app = QApplication([])
    folder = tempfile.mkdtemp()
    a, b = args.files if len(args.files) == 2 else make_pair(folder)
    settings = QSettings(os.path.join(folder, "s.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings)
    win.resize(*(int(x) for x in args.size.split("x")))
    win.browser.set_folder(os.path.dirname(os.path.abspath(a)))
    win.show()
    answers = [a, b]
    win.ask_compare_file = lambda _title: answers.pop(0)  # what the user picks

    def shown(view) -> None:
        if args.grouped:
            view.group_box.setChecked(True)
        names = [f[0].split()[0].lower() for f in FILTERS]
        view.filter_buttons.button(names.index(args.filter)).click()
        key = args.key
        if not key:  # the first row (the largest difference) with a histogram, else the first
            entries = [n for n in view.model().node(view.tree.rootIndex()).walk()
                       if n.entry is not None]
            key = next((n.key for n in entries if not histogram_reason(n.entry)),
                       entries[0].key if entries else "")
        view.select_key(key)
        view.tree.scrollToTop()  # the largest differences, and the row if it is among them
        view.tree.scrollTo(view.tree.currentIndex())
        panel = view.entry_panel

        def wait(tries: int = 200) -> None:
            if (panel.busy or panel.hist_panel is None) and tries:
                QTimer.singleShot(100, lambda: wait(tries - 1))
                return
            QTimer.singleShot(400, snap)

        wait()

    def snap() -> None:
        app.processEvents()
        win.grab().save(args.out)
        print("saved", args.out)
        app.quit()

    win.comparison_shown.connect(shown)
    QTimer.singleShot(800, win.compare_action.trigger)
    app.exec()


if __name__ == "__main__":
    main()

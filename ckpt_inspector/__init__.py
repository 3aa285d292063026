"""ckpt-inspector: open any PyTorch checkpoint safely and see what is inside it."""

__version__ = "0.1.0"

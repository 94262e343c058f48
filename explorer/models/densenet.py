"""Kept for imports: the densenet builder and its blocks live in explorer/families/densenet.py."""

from explorer.families.densenet import DenseBlock, build_densenet, kept_channels

__all__ = ["DenseBlock", "kept_channels", "build_densenet"]

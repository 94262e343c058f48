"""Kept for imports: the alexnet builder and its blocks live in explorer/families/alexnet.py."""

from explorer.families.alexnet import build_alexnet

__all__ = ["build_alexnet"]

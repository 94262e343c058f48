"""Kept for imports: the lenet builder and its blocks live in explorer/families/lenet.py."""

from explorer.families.lenet import build_lenet

__all__ = ["build_lenet"]

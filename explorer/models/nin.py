"""Kept for imports: the nin builder and its blocks live in explorer/families/nin.py."""

from explorer.families.nin import build_nin, nin_block

__all__ = ["nin_block", "build_nin"]

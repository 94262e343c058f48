"""Kept for imports: the vgg builder and its blocks live in explorer/families/vgg.py."""

from explorer.families.vgg import build_vgg, vgg_block

__all__ = ["vgg_block", "build_vgg"]

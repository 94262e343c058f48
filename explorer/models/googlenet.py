"""Kept for imports: the googlenet builder and its blocks live in explorer/families/googlenet.py."""

from explorer.families.googlenet import InceptionBlock, build_googlenet, conv_unit

__all__ = ["conv_unit", "InceptionBlock", "build_googlenet"]

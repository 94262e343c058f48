"""Kept for imports: the resnet builder and its blocks live in explorer/families/resnet.py."""

from explorer.families.resnet import ResidualBlock, build_resnet

__all__ = ["ResidualBlock", "build_resnet"]

"""CNN Explorer: build, analyse and train the classic and modern CNNs of the d2l.ai lectures.

This package never imports streamlit; the pages in ``pages/`` are thin views over it.
"""

from explorer.errors import ConfigError

__all__ = ["ConfigError"]

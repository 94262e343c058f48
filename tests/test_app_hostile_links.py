"""Every page opened from a hostile link (issue 11): a sentence, never an exception, and text
from the link shown as text (no Markdown image or link)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")
EVIL_IMAGE = "![t](http://evil.example/x.png)"
EVIL_LINK = "[click](http://evil.example/)"
DIGITS = "9" * 5000  # Python refuses to convert more than 4,300 digits
DEEP = "[" * 20_000 + "]" * 20_000

CASES = {
    "build": [
        {"family": "alexnet", "dropout": "1" + "0" * 400, "hidden": DEEP},
        {"family": "alexnet", "input_shape": "[3,256,256]", "hidden": "[]", "avgpool_size": "1",
         "convs": "[[500,31,1,15,false],[500,31,1,15,false]]"},  # 16 T multiply-adds
        {"family": EVIL_IMAGE, "preset": EVIL_LINK},
        {"preset": "vgg" * 2000},
    ],
    "train": [
        {"run": "²", "tr_lr": "1e400", "tr_batch": DIGITS, "tr_preset": EVIL_IMAGE,
         "tr_optimizer": EVIL_LINK, "tr_source": DEEP},
        {"run": "1" * 25},
    ],
    "bn_lab": [
        {"bn_run": "²", "bn_exp": "1," + "9" * 25, "bn_layer": EVIL_IMAGE, "bn_view": EVIL_LINK},
        {"bn_run": "1" * 25, "bn_exp": "²,³"},
    ],
    "compare": [
        {"cmp_models": ",".join(f"m{i}" for i in range(500)), "cmp_view": EVIL_LINK},
        {"cmp_models": f"mine,{EVIL_IMAGE}", "cmp_spec_mine": DEEP, "cmp_pair": EVIL_LINK},
    ],
    "conv": [
        {"conv_c": DIGITS, "conv_k": EVIL_IMAGE, "conv_mode": EVIL_LINK, "conv_bias": "²"},
    ],
}
MARKDOWN_ELEMENTS = ("error", "warning", "info", "success", "markdown", "caption")


@pytest.mark.parametrize("page, query", [(p, q) for p, qs in CASES.items() for q in qs],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_a_hostile_link_is_answered_with_sentences(page, query):
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in query.items():
        at.query_params[key] = value
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, at.exception
    texts = [e.value for kind in MARKDOWN_ELEMENTS for e in getattr(at, kind)]
    # The page guard's sentence would mean an exception no page expected.
    assert not any("went wrong" in t for t in texts), texts
    assert all(len(t) < 2_000 for t in texts), texts  # sentences, not the link echoed back
    for text in texts:
        # An image or a link needs an unescaped "](" and a bare URL needs "://" left whole.
        assert not re.search(r"(?<!\\)\]\(", text) or "evil" not in text, text
        assert "http://evil" not in text, text

"""Folding: eval-mode BN folded into the conv or linear layer before it (d2l §8.5)."""

from __future__ import annotations

import pandas as pd
import streamlit as st
import torch

from explorer import bn_lab
from explorer.registry import get_preset
from pages.bn_views.shared import KEEP, LINK, settings_and_results, state

FOLD_CHOICES = ("course_resnet18", "course_bn_lenet", "course_resnext", "course_densenet",
                "course_resnet_3x4_28", "resnet18", "resnet50", "densenet121", "googlenet")


@st.cache_resource(max_entries=2, show_spinner="Building and folding the model…")
def folded(preset: str):
    spec = get_preset(preset).spec
    return bn_lab.fold_check(spec), spec


def timed(preset: str):
    result, spec = folded(preset)
    x = torch.randn((8, *spec.input_shape), generator=torch.Generator().manual_seed(0))
    return bn_lab.time_fold(result["model"], result["folded"], x, repeats=5)


def show() -> None:
    left, right = settings_and_results()
    with left:
        st.selectbox("Model", FOLD_CHOICES, key="bn_fold_model", persist_state=KEEP, bind=LINK)
        st.markdown("At test time BN is a fixed affine map per channel, y = s·x + t with "
                    "s = γ/√(σ² + ε) and t = β − μ·s. After a conv or linear layer "
                    "W·x + b it folds into it: W' = s·W, b' = s·b + t, and the BN layer "
                    "disappears (d2l §8.5).")
        st.caption("The model has random weights and randomised running statistics, γ and β "
                   "(as if trained), so the comparison is not trivial.")
        measure = st.button("Time it on this CPU", width="stretch",
                            help="A batch of 8 images through the original and the folded "
                                 "model, 5 times each, alternately: a few seconds")
    result, spec = folded(state["bn_fold_model"])
    with right:
        top = st.columns(4)
        top[0].metric("BN layers folded", len(result["pairs"]))
        top[1].metric("BN layers kept", len(result["kept"]))
        top[2].metric("Max |Δ output|", f"{result['max_abs_diff']:.1e}",
                      help="eval mode, 4 random inputs, float32")
        top[3].metric("Largest output", f"{result['max_abs_output']:.2f}")
        ok = result["max_abs_diff"] <= 1e-4 * max(1.0, result["max_abs_output"])
        (st.success if ok else st.warning)(
            f"The folded model's eval-mode outputs equal the original's up to "
            f"{result['max_abs_diff']:.1e}, float32 rounding." if ok else
            f"The folded outputs differ by {result['max_abs_diff']:.1e}: more than float32 "
            f"rounding explains.")
        if measure:
            with st.spinner("Timing…"):
                t = timed(state["bn_fold_model"])
            st.info(f"Measured now, batch of 8 at {'×'.join(map(str, spec.input_shape))}: "
                    f"{t['images_per_s_unfolded']:.0f} images/s unfolded, "
                    f"{t['images_per_s_folded']:.0f} folded: {t['speedup']:.2f}× "
                    f"(a busy, shared server makes this noisy).")
        st.caption("Benchmark: `python bench/bench_bn_fold.py` times torchvision's resnet18 "
                   "at 3×224×224 on the CPU, folded against unfolded, interleaved.")
        table = pd.DataFrame(
            [{"BN layer": b, "folded into": c, "why not": ""} for c, b in result["pairs"]]
            + [{"BN layer": b, "folded into": "—", "why not": why} for b, why in result["kept"]])
        st.dataframe(table, hide_index=True, width="stretch", height=300)

"""Other norms: batch, layer, instance and group norm side by side, against PyTorch."""

from __future__ import annotations

import pandas as pd
import streamlit as st
import torch

from explorer import bn, bn_charts, bn_lab
from explorer.errors import ConfigError
from pages.bn_views.shared import KEEP, LINK, settings_and_results, state


def means_frame(kind: str, mean: torch.Tensor) -> pd.DataFrame:
    """One row per example (one row in all for batch norm), one column per channel or group."""
    if mean.dim() == 1:
        prefix = "c" if kind == "batch" else "n"
        return pd.DataFrame([mean.numpy()], index=["mean"],
                            columns=[f"{prefix}{i}" for i in range(len(mean))]).round(3)
    prefix = "g" if kind == "group" else "c"
    return pd.DataFrame(mean.numpy(), index=[f"n{i}" for i in range(mean.shape[0])],
                        columns=[f"{prefix}{i}" for i in range(mean.shape[1])]).round(3)


def show() -> None:
    left, right = settings_and_results()
    with left:
        c1, c2 = st.columns(2)
        c1.number_input("N (examples)", 1, 8, 3, key="bn_nm_n", persist_state=KEEP, bind=LINK)
        c2.number_input("C (channels)", 1, 12, 6, key="bn_nm_c", persist_state=KEEP, bind=LINK)
        c1.number_input("H", 1, 6, 2, key="bn_nm_h", persist_state=KEEP, bind=LINK)
        c2.number_input("W", 1, 6, 2, key="bn_nm_w", persist_state=KEEP, bind=LINK)
        divisors = [g for g in range(1, state["bn_nm_c"] + 1) if state["bn_nm_c"] % g == 0]
        if state.get("bn_nm_g") not in divisors:
            state["bn_nm_g"] = divisors[len(divisors) // 2]
        st.selectbox("Groups G (group norm)", divisors, key="bn_nm_g", persist_state=KEEP,
                     bind=LINK,
                     help="G must divide C")
        st.caption("Batch norm needs the batch (so training and eval differ); the other three "
                   "normalise each example on its own.")
    n, c, h, w, g = (state[k] for k in ("bn_nm_n", "bn_nm_c", "bn_nm_h", "bn_nm_w", "bn_nm_g"))
    with right:
        try:
            axes = bn.norm_axes((n, c, h, w), g)
        except ConfigError as exc:
            st.error(str(exc))
            return
        st.plotly_chart(bn_charts.norm_axes_picture(axes), width="stretch")
        st.caption("Rows are examples, columns channels; the H×W positions of a cell share its "
                   "colour. One number (and colour) is one set of values normalised together.")
        x = torch.randn((n, c, h, w), generator=torch.Generator().manual_seed(0)) * 3 + 1
        values = bn.normalize_all(x, g)
        check = bn_lab.norms_vs_torch(x, g)
        rows = [{"norm": bn_charts.NORM_TITLES[k], "one statistic per": "·".join(a["per"]),
                 "sets": a["n_sets"], "values per set": a["values_per_set"],
                 "train ≠ eval": "yes" if a["train_eval_differ"] else "no",
                 "max |hand − torch|": check[k]} for k, a in axes.items()]
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config={
            "max |hand − torch|": st.column_config.NumberColumn(format="%.1e")})
        kind = st.radio("Means of", list(values), horizontal=True, key="bn_nm_kind",
                        persist_state=KEEP, bind=LINK,
                        format_func=bn_charts.NORM_TITLES.get)
        st.dataframe(means_frame(kind, values[kind]["mean"]), width="stretch")
        st.caption("; ".join(f"{bn_charts.NORM_TITLES[k]}: `{a['torch']}` ({a['paper']})"
                             for k, a in axes.items()) + ".")
        st.caption(f"The means of a seeded {n}×{c}×{h}×{w} tensor (×3 + 1): one per set. Hand "
                   f"computation (`explorer.bn.normalize_all`) against PyTorch's modules in the "
                   f"table above.")

"""BN from scratch against nn.BatchNorm: four conventions and three traps (d2l §8.5)."""

from __future__ import annotations

import pandas as pd
import streamlit as st
import torch

from explorer import bn, bn_lab
from pages.bn_views.shared import KEEP, LINK, settings_and_results, state


@st.cache_data(max_entries=32, show_spinner=False)
def scratch_tables(layout: str, n: int, steps: int, scale: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 4) if layout == "N×D" else (n, 3, 4, 4)
    x = (torch.randn(shape, generator=g) * 2 + 1) * scale
    table = pd.DataFrame(bn.compare_with_torch(x, steps, seed=seed)).T
    return table, bn_lab.one_step_running_var(x)


def show() -> None:
    left, right = settings_and_results()
    with left:
        st.markdown("The layer written from scratch as the lecture derives it "
                    "(`explorer.bn.batch_norm`), in four conventions, against PyTorch's "
                    "`nn.BatchNorm1d/2d` on the same input, the same γ and β, and the same "
                    "training steps.")
        st.radio("Input", ["N×C×H×W", "N×D"], key="bn_sc_layout", persist_state=KEEP, bind=LINK,
                 horizontal=True,
                 format_func={"N×C×H×W": "after a conv (N×3×4×4)",
                              "N×D": "after a linear layer (N×4)"}.get)
        st.number_input("Batch size N", 2, 256, 8, key="bn_sc_n", persist_state=KEEP, bind=LINK)
        st.number_input("Training steps", 1, 50, 5, key="bn_sc_steps", persist_state=KEEP,
                        bind=LINK)
        st.select_slider("Input scale", [1.0, 0.1, 0.01, 0.001], key="bn_sc_scale",
                         persist_state=KEEP, bind=LINK,
                         help="Multiply the input: a small σ makes (σ + ε) and √(σ² + ε) "
                              "disagree")
        st.number_input("Seed", 0, 10_000, 0, key="bn_sc_seed", persist_state=KEEP, bind=LINK)
    table, one = scratch_tables(state["bn_sc_layout"], state["bn_sc_n"], state["bn_sc_steps"],
                                state["bn_sc_scale"], state["bn_sc_seed"])
    with right:
        py = table.loc["pytorch"]
        top = st.columns(3)
        top[0].metric("Train output, max |Δ|", f"{py['train_output']:.1e}",
                      help="scratch 'pytorch' convention against nn.BatchNorm, training mode")
        top[1].metric("Eval output, max |Δ|", f"{py['eval_output']:.1e}")
        top[2].metric("running_var, max |Δ|", f"{py['running_var']:.1e}")
        shown = table.assign(convention=table.index)
        st.dataframe(shown[["convention", "momentum", "train_output", "eval_output",
                            "running_mean", "running_var"]],
                     hide_index=True, width="stretch", column_config={
                         k: st.column_config.NumberColumn(k, format="%.1e") for k in
                         ("train_output", "eval_output", "running_mean", "running_var")})
        st.caption("Each number is the largest absolute difference from nn.BatchNorm after "
                   f"{state['bn_sc_steps']} training steps (float32: 1e-7 means equal).")
        with st.expander("What each convention does"):
            for name in table.index:
                st.markdown(f"- **{name}**: {bn.CONVENTIONS[name].description}")
        st.markdown("**Three convention traps**")
        st.markdown(
            f"1. **Unbiased running variance.** PyTorch normalises with the biased variance "
            f"(÷ n) but updates running_var with the unbiased one (÷ (n−1)). Here n = "
            f"{one['n']} values per channel: channel 0's batch variance is "
            f"{one['biased_var']:.4f} biased, {one['unbiased_var']:.4f} unbiased, so after one "
            f"step PyTorch's running_var is 0.9 + 0.1 × {one['unbiased_var']:.4f} = "
            f"{one['torch_running_var']:.4f}, the book's {one['book_running_var']:.4f}. That "
            f"is the d2l row's running_var difference "
            f"({table.loc['d2l', 'running_var']:.1e}); it shrinks as n grows.")
        st.markdown(
            f"2. **Momentum 0.1 = momentum 0.9.** PyTorch's momentum weights the new batch "
            f"(new = 0.9·old + 0.1·batch); the MXNet notebook's 0.9 weights the old value, the "
            f"same update. The mxnet row's running mean differs by "
            f"{table.loc['mxnet', 'running_mean']:.1e}; only its running variance differs "
            f"(biased, trap 1).")
        st.markdown(
            f"3. **(σ + ε) against √(σ² + ε).** Dividing by σ + ε matches only while σ ≫ ε = "
            f"1e-5: the sigma_eps row's training output differs by "
            f"{table.loc['sigma_eps', 'train_output']:.1e} at input scale "
            f"{state['bn_sc_scale']:g}; try 0.001.")

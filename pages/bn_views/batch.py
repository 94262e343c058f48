"""Batch size: how noisy one batch's statistics are, and what a batch of one does."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from explorer import bn, bn_charts, bn_lab
from pages.bn_views.shared import demo, settings_and_results


@st.cache_data(show_spinner="Drawing 200 batches of each size…")
def noise_results():
    model, data, lock = demo()
    x = bn_lab.demo_batch(data, len(data.test_labels), (1, 28, 28))
    with lock:
        inputs = bn_lab.bn_inputs(model, x)
    conv, fc = inputs["features.bn2"][:, :4], inputs["head.bn1"]
    return {
        "conv": bn.batch_stat_noise(bn_lab.standardise_channels(conv), trials=100),
        "fc": bn.batch_stat_noise(bn_lab.standardise_channels(fc), trials=200),
        "one_conv": bn.batch_size_one(conv), "one_fc": bn.batch_size_one(fc),
        "conv_shape": tuple(conv.shape[1:]), "fc_shape": tuple(fc.shape[1:]),
    }


def show() -> None:
    res = noise_results()
    left, right = settings_and_results()
    with left:
        st.markdown("BN's mean and variance come from one batch, so they are noisy. The inputs "
                    "are what two BN layers of the trained BN-LeNet receive for the 1,000 "
                    "offline test digits; batches are drawn from them 200 times per size "
                    "(100 for the conv layer).")
        st.markdown("Each channel is measured in units of its own population mean and "
                    "standard deviation, so the two layers compare. The mean's spread falls "
                    "like 1/√(batch size); a conv channel pools every position of every "
                    "example, so its statistics are steadier at the same batch size.")
        st.markdown("The lecture's advice: batches of 50–100 give statistics stable enough to "
                    "train with, and noisy enough to regularise a little.")
    with right:
        c, h, w = res["conv_shape"]
        per = h * w
        curves = {"after a linear layer (head.bn1: 1 value per example)": res["fc"]["rows"],
                  f"after a conv (features.bn2: {h}×{w} = {per} values per example)":
                      res["conv"]["rows"]}
        st.plotly_chart(bn_charts.batch_noise(curves), width="stretch")
        fc1, cv1 = res["one_fc"], res["one_conv"]
        rows = [
            {"layer": "linear (N×D)", "values per channel": fc1["values_per_channel"],
             "channels with variance 0": f"{(fc1['batch_var'] == 0).mean():.0%}",
             "output": "β exactly" if fc1["output_equals_beta"] else "follows the input",
             "nn.BatchNorm": "refuses" if fc1["torch_error"] else "runs"},
            {"layer": "conv (N×C×H×W)", "values per channel": cv1["values_per_channel"],
             "channels with variance 0": f"{(cv1['batch_var'] == 0).mean():.0%}",
             "output": "β exactly" if cv1["output_equals_beta"] else "follows the input",
             "nn.BatchNorm": "refuses" if cv1["torch_error"] else "runs"},
        ]
        st.markdown("**Batch size 1** in training mode:")
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        st.markdown(f"After a linear layer each channel sees one number per example: with one "
                    f"example its variance is 0, x̂ = 0 and the output is β whatever the input, "
                    f"so PyTorch refuses (“{fc1['torch_error']}”). A conv channel still has "
                    f"{per} positions per example, so its batch statistics exist even for a "
                    f"single image (they become instance norm's).")

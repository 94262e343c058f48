"""Train vs eval: the same batch through a trained BN-LeNet in both modes."""

from __future__ import annotations

import streamlit as st

from explorer import bn, bn_charts, bn_lab
from pages.bn_views.shared import KEEP, LINK, demo, settings_and_results, state


@st.cache_data(max_entries=64, show_spinner="Running the model in both modes…")
def modes_result(batch_size: int, example: int):
    model, data, lock = demo()
    x = bn_lab.demo_batch(data, batch_size, (1, 28, 28))
    with lock:
        result = bn.train_vs_eval(model, x, example=example, bn_only=True)
    labels = data.test_labels[:batch_size].numpy()
    return result, labels


def show() -> None:
    left, right = settings_and_results()
    with left:
        st.markdown("A BN-LeNet trained for 45 steps (lr 1.0) on the offline digits, fed the "
                    "same test batch in **eval mode** (running averages, `model.eval()`) and in "
                    "**training mode** (each BN layer uses this batch's own mean and variance).")
        st.select_slider("Batch size", [2, 4, 8, 16, 32, 64, 128, 256], value=64,
                         key="bn_md_batch", persist_state=KEEP, bind=LINK)
        st.number_input("Example to follow", 0, 255, 0, key="bn_md_example",
                        persist_state=KEEP, bind=LINK,
                        help="Its position in the batch")
    n, ex = state["bn_md_batch"], state["bn_md_example"]
    with right:
        if ex >= n:
            st.error(f"Example {ex} is not in a batch of {n}; choose a position from 0 to "
                     f"{n - 1} or a larger batch.")
            return
        r, labels = modes_result(n, ex)
        top = st.columns(4)
        top[0].metric("Max |Δ output|", f"{r['max_abs_diff']:.2f}",
                      help="largest difference between the two modes' logits")
        # Short labels: four metrics share the right column (about 165 px each at 1280 px).
        top[1].metric("Disagreement", f"{r['pred_disagreement']:.0%}",
                      help="share of the batch whose predicted class differs between the "
                           "two modes")
        acc_eval = float((r["eval_pred"] == labels).mean())
        acc_train = float((r["train_pred"] == labels).mean())
        top[2].metric("Accuracy, eval", f"{acc_eval:.0%}",
                      help="eval mode: every BN layer uses its running averages")
        top[3].metric("Accuracy, train", f"{acc_train:.0%}",
                      help="training mode: every BN layer uses this batch's mean and variance")
        st.plotly_chart(bn_charts.train_vs_eval_scores(r, ex, int(labels[ex])), width="stretch")
        single = r["single"]
        st.markdown(
            f"**One example alone.** In eval mode example {ex} gets the same scores alone as "
            f"inside the batch (largest difference {single['eval_alone_vs_in_batch']:.1e}): "
            f"each example is normalised with fixed averages. In training mode its scores "
            f"depend on the other {n - 1} examples of the batch.")
        if single["error"]:
            st.warning(f"Alone in training mode it cannot run at all. PyTorch says: "
                       f"“{single['error']}”: the BN layers after the linear layers see one "
                       f"value per channel, whose variance is 0.")
        st.caption("Forgetting `model.eval()` before testing is the classic bug: smaller "
                   "batches make the two modes disagree more. Try batch size 2.")

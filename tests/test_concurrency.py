"""Analyses of different models run at the same time and touch nothing process-wide (issue 11).

The receptive-field graph used to be traced with torch.fx, which patches ``nn.Module.__call__``
for the whole process, so every analysis held one global lock and a class's small links waited
behind one large one. The graph is now captured with a per-thread ``TorchFunctionMode`` and
per-model hooks; these tests hold one analysis in the middle of its capture and check that
another thread neither waits for it nor sees anything of it.
"""

from __future__ import annotations

import threading

import pandas as pd
import torch
import torchvision
from torch import nn
from torch.overrides import TorchFunctionMode

from explorer.analysis import analyze


def lenet5() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.Sigmoid(), nn.AvgPool2d(2, 2),
        nn.Conv2d(6, 16, 5), nn.Sigmoid(), nn.AvgPool2d(2, 2),
        nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.Sigmoid(), nn.Linear(84, 10))


class Gate(nn.Module):
    """Holds the first forward pass (the graph capture) until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()
        self.devices: list[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.devices.append(x.device.type)
        if not self.entered.is_set():
            self.entered.set()
            self.release.wait(60)
        return x


def _same(a, b) -> None:  # noqa: ANN001
    pd.testing.assert_frame_equal(a.table, b.table)
    assert a.totals == b.totals


def test_a_small_analysis_is_not_held_up_by_a_running_one():
    gate = Gate()
    big = nn.Sequential(nn.Conv2d(1, 4, 3), gate, nn.Conv2d(4, 4, 3))
    results: dict[str, object] = {}
    lenet_done_while_held: list[bool] = []

    def held() -> None:
        results["big"] = analyze(big, (1, 16, 16))

    thread = threading.Thread(target=held)
    thread.start()
    assert gate.entered.wait(60)  # the first analysis is now inside its graph capture
    try:
        results["lenet"] = analyze(lenet5(), (1, 28, 28))
        lenet_done_while_held.append(not gate.release.is_set() and thread.is_alive())
    finally:
        gate.release.set()
        thread.join(60)
    # With one global analysis lock this LeNet would have waited for the release (60 s), and
    # the held analysis would have finished first.
    assert lenet_done_while_held == [True]
    assert gate.devices[0] == "meta"  # held in the capture, which runs on the meta device
    _same(results["lenet"], analyze(lenet5(), (1, 28, 28)))
    # conv3 → 3, conv3 → 5 (a hand computation), whatever ran beside it
    assert results["big"].totals["receptive_field"] == 5
    assert results["big"].totals["receptive_field_exact"]


def test_two_analyses_at_once_equal_their_single_thread_results():
    def densenet() -> nn.Module:
        torch.manual_seed(0)
        return torchvision.models.densenet121(weights=None)

    alone = {"dense": analyze(densenet(), (3, 64, 64)), "lenet": analyze(lenet5(), (1, 28, 28))}
    together: dict[str, object] = {}
    errors: list[str] = []
    start = threading.Barrier(2)

    def run(name: str, make, shape) -> None:  # noqa: ANN001
        try:
            model = make()
            start.wait(60)
            for _ in range(3 if name == "lenet" else 1):  # several small ones beside a large one
                together[name] = analyze(model, shape)
        except Exception as exc:  # reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=run, args=("dense", densenet, (3, 64, 64))),
               threading.Thread(target=run, args=("lenet", lenet5, (1, 28, 28)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []
    _same(together["dense"], alone["dense"])
    _same(together["lenet"], alone["lenet"])
    # torchvision's DenseNet-121 (an independent check): 7,978,856 parameters
    assert alone["dense"].totals["total_params"] == 7_978_856


def test_an_analysis_changes_nothing_another_thread_sees():
    call, getattr_ = nn.Module.__call__, nn.Module.__getattr__
    gate = Gate()
    held_model = nn.Sequential(nn.Conv2d(1, 2, 3), gate, nn.Conv2d(2, 2, 3))
    thread = threading.Thread(target=lambda: analyze(held_model, (1, 12, 12)))
    thread.start()
    assert gate.entered.wait(60)
    seen: dict[str, object] = {}
    calls: list[str] = []

    class Spy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            calls.append(getattr(func, "__name__", "?"))
            return func(*args, **(kwargs or {}))

    try:
        # Meanwhile, in this thread: the process-wide Module methods are the originals ...
        seen["call"] = nn.Module.__call__ is call
        seen["getattr"] = nn.Module.__getattr__ is getattr_
        # ... torch runs real arithmetic on real devices (the capture's meta mode is not here) ...
        y = torch.ones(2, 2) @ torch.full((2, 2), 3.0)
        seen["matmul"] = (y.device.type, y.tolist())
        # ... a model trains normally, its hooks alone fire, no node of the capture is added ...
        torch.manual_seed(0)
        other = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
        fired: list[str] = []
        other[0].register_forward_hook(lambda m, i, o: fired.append(o.device.type))
        other(torch.randn(1, 1, 8, 8)).sum().backward()
        seen["train"] = (fired, other[0].weight.grad is not None)
        # ... and a mode pushed here sees this thread's calls only.
        with Spy():
            torch.add(torch.ones(1), 1)
        seen["spy"] = list(calls)
    finally:
        gate.release.set()
        thread.join(60)
    assert seen["call"] and seen["getattr"]
    assert seen["matmul"] == ("cpu", [[6.0, 6.0], [6.0, 6.0]])
    assert seen["train"] == (["cpu"], True)
    assert seen["spy"] == ["ones", "add"]  # this thread's two calls, nothing of the other
    assert nn.Module.__call__ is call and nn.Module.__getattr__ is getattr_
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in held_model.modules())


def test_inspecting_one_model_does_not_hold_up_another():
    from explorer.inspect import run_image

    gate = Gate()
    held = nn.Sequential(nn.Conv2d(1, 2, 3), gate, nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    thread = threading.Thread(target=lambda: run_image(held, torch.zeros(1, 8, 8)))
    thread.start()
    assert gate.entered.wait(60)  # the first inspection is inside its forward pass
    try:
        torch.manual_seed(0)
        other = lenet5()
        x = torch.randn(1, 28, 28)
        logits = run_image(other, x).logits
        done_while_held = not gate.release.is_set() and thread.is_alive()
    finally:
        gate.release.set()
        thread.join(60)
    assert done_while_held  # one global inspection lock would have made this wait
    with torch.no_grad():
        assert torch.equal(logits, other.eval()(x[None])[0])  # the model's own forward pass

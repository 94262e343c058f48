"""Batch normalization lab: BN from scratch, statistics capture, train/eval, folding, other norms.

Follows d2l.ai §8.5 "Batch Normalization" (Ioffe & Szegedy, 2015, arXiv:1502.03167) and the
course notebooks built on it; layer, instance and group norm come from Ba et al. 2016, Ulyanov
et al. 2016 and Wu & He 2018 (arXiv:1803.08494). One module per concern:

- ``conventions``: the conventions, ``batch_norm``, ``ScratchBatchNorm``, test-time BN as affine
- ``recorder``: ``BNStatsRecorder``, per-channel statistics during training
- ``demos``: histograms, train vs eval, batch-size noise, a batch of one
- ``folding``: which BN layers fold into their conv/linear layer, and the folded copy
- ``dataflow``: which layer feeds which, from a meta-device pass (folding's graph, no torch.fx)
- ``norms``: batch, layer, instance and group norm side by side
- ``rng``: ``local_rng``, a seeded generator for one block of one thread (the demos' RNG)
"""

from explorer.bn.conventions import (
    CONVENTIONS,
    Convention,
    ScratchBatchNorm,
    batch_norm,
    bn_affine,
    compare_with_torch,
)
from explorer.bn.demos import (
    activation_histograms,
    batch_size_one,
    batch_stat_noise,
    preserved,
    train_vs_eval,
)
from explorer.bn.folding import FoldPlan, find_foldable, fold_bn
from explorer.bn.norms import norm_axes, normalize_all
from explorer.bn.recorder import DEFAULT_EVERY, QUANTITIES, BNStatsRecorder

__all__ = [
    "CONVENTIONS",
    "DEFAULT_EVERY",
    "QUANTITIES",
    "BNStatsRecorder",
    "Convention",
    "FoldPlan",
    "ScratchBatchNorm",
    "activation_histograms",
    "batch_norm",
    "batch_size_one",
    "batch_stat_noise",
    "bn_affine",
    "compare_with_torch",
    "find_foldable",
    "fold_bn",
    "norm_axes",
    "normalize_all",
    "preserved",
    "train_vs_eval",
]

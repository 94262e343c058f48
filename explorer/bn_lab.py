"""What the Batch norm page uses, in one namespace (the code lives in ``explorer.bn``'s modules).

d2l.ai §8.5; Ioffe & Szegedy 2015. One module per concern:

- ``explorer.bn.stored``: which models have BN, how often to record, the recorder that saves
  itself into the run store while a worker trains, and the runs that have one
- ``explorer.bn.histograms``: activation histograms of every BN layer at a few moments of a run
- ``explorer.bn.experiment``: the lecture's LeNet ± BN experiment, its verdict as data, and the
  briefly trained BN-LeNet of the demonstrations
- ``explorer.bn.folding``, ``conventions``, ``demos``, ``norms``: the checks the page shows
  (a preset folded, the running variance after one step, BN's inputs, the norms against torch)

The worker (``explorer.jobs``) and the benchmarks import ``StoredBNRecorder`` and
``choose_every`` from here.
"""

from explorer.bn.conventions import BN_TYPES, one_step_running_var
from explorer.bn.demos import bn_inputs, standardise_channels
from explorer.bn.experiment import (
    BN_NAME,
    EXPERIMENT_EPOCHS,
    PLAIN_NAME,
    Experiment,
    Outcome,
    Verdict,
    demo_batch,
    demo_model,
    experiment_config,
    experiment_specs,
    experiment_verdict,
    latest_experiment,
    linked_experiment,
    start_experiment,
)
from explorer.bn.folding import fold_check, randomise_bn, time_fold
from explorer.bn.histograms import HIST_BINS, HistogramSnapshots, layer_histograms
from explorer.bn.norms import norms_vs_torch
from explorer.bn.stored import (
    HIST_BATCH,
    HISTOGRAMS_ARTIFACT,
    MAX_ROWS,
    MAX_STATS_BYTES,
    MIN_EVERY,
    RECORDED_PREFIX,
    STATS_ARTIFACT,
    StoredBNRecorder,
    bn_layers,
    bn_presets,
    choose_every,
    load_histograms,
    load_stats,
    recorded_runs,
    spec_bn_layers,
    start_recorded_run,
)

__all__ = [
    "BN_NAME", "BN_TYPES", "EXPERIMENT_EPOCHS", "HISTOGRAMS_ARTIFACT", "HIST_BATCH", "HIST_BINS",
    "MAX_ROWS", "MAX_STATS_BYTES", "MIN_EVERY", "PLAIN_NAME", "RECORDED_PREFIX",
    "STATS_ARTIFACT", "Experiment", "HistogramSnapshots", "Outcome", "StoredBNRecorder",
    "Verdict", "bn_inputs", "bn_layers", "bn_presets", "choose_every", "demo_batch",
    "demo_model", "experiment_config", "experiment_specs", "experiment_verdict", "fold_check",
    "latest_experiment", "layer_histograms", "linked_experiment", "load_histograms",
    "load_stats", "norms_vs_torch", "one_step_running_var", "randomise_bn", "recorded_runs",
    "spec_bn_layers", "standardise_channels", "start_experiment", "start_recorded_run",
    "time_fold",
]

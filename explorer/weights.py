"""A run's weights as safetensors files beside the run store, never pickles (safetensors docs).

Files live in ``<folder of the store file>/weights/``: ``run-<id>.safetensors`` holds the final
weights, ``run-<id>-epoch<k>.safetensors`` an epoch's (small models only). A safetensors file is
a JSON header plus raw tensor bytes, so loading one runs no code, unlike ``torch.load`` of a
pickle. Its metadata carries the spec, so a file alone rebuilds its model.

Two size limits keep a server's disk in check, read from the environment when a file is saved:
``EXPLORER_WEIGHTS_MAX_RUN_MB`` (default 200) for one run's files and
``EXPLORER_WEIGHTS_MAX_TOTAL_MB`` (default 2048) for the whole folder. A file over a limit is
refused; room for a new file is made by deleting the oldest other files. Either way a sentence is
written to ``run-<id>.note.txt`` for the run that lost its weights (``weights_note`` reads it):
nothing disappears silently.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from explorer.errors import ConfigError

MB = 1_000_000
DEFAULT_MAX_RUN_MB = 200
DEFAULT_MAX_TOTAL_MB = 2048
DEFAULT_EPOCH_MAX_MB = 10  # keep every epoch's weights only for models up to this size
SUFFIX = ".safetensors"
_NAME = re.compile(r"^run-(\d+)(?:-epoch(\d+))?\.safetensors$")


@dataclass(frozen=True)
class WeightsLimits:
    """Size limits in bytes; ``from_env`` reads them from the environment."""

    per_run: int = DEFAULT_MAX_RUN_MB * MB  # all files of one run together
    total: int = DEFAULT_MAX_TOTAL_MB * MB  # every file in the weights folder
    epoch_model: int = DEFAULT_EPOCH_MAX_MB * MB  # epoch snapshots only below this model size

    @classmethod
    def from_env(cls) -> WeightsLimits:
        """Limits from EXPLORER_WEIGHTS_MAX_RUN_MB, _MAX_TOTAL_MB and _EPOCH_MAX_MB (megabytes)."""
        def mb(name: str, default: int) -> int:
            text = os.environ.get(name, "").strip()
            if not text:
                return default * MB
            try:
                value = float(text)
            except ValueError:
                raise ConfigError(f"{name} must be a number of megabytes such as {default}, "
                                  f"not {text!r}.") from None
            if value < 0:
                raise ConfigError(f"{name} must be zero or more megabytes, not {text}.")
            return int(value * MB)

        return cls(mb("EXPLORER_WEIGHTS_MAX_RUN_MB", DEFAULT_MAX_RUN_MB),
                   mb("EXPLORER_WEIGHTS_MAX_TOTAL_MB", DEFAULT_MAX_TOTAL_MB),
                   mb("EXPLORER_WEIGHTS_EPOCH_MAX_MB", DEFAULT_EPOCH_MAX_MB))


@dataclass(frozen=True)
class SaveResult:
    """What ``save_weights`` did: the file (None when refused) and sentences for the user."""

    path: Path | None
    bytes: int
    notes: tuple[str, ...] = ()  # refusals and evictions, each one sentence

    @property
    def saved(self) -> bool:
        return self.path is not None


@dataclass(frozen=True)
class Weights:
    """A loaded weights file: its tensors and the metadata saved with them."""

    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, str]

    @property
    def spec(self) -> Any:
        """The spec saved with the weights (a spec dataclass), or None."""
        text = self.metadata.get("spec")
        if not text:
            return None
        from explorer.specs import spec_from_json

        return spec_from_json(text)


def weights_dir(where: Any = None) -> Path:
    """The weights folder for a store: a RunStore, a store file path, or a folder; None = default.

    A path that names an existing directory is the weights folder itself; any other path is
    taken as the store file, and its folder's ``weights`` subfolder is used. A store that is a
    database URL (PostgreSQL) keeps them in $EXPLORER_WEIGHTS_DIR, else ./weights: on several
    machines, a folder they all share.
    """
    if where is None:
        from explorer.runs import default_store_path

        where = default_store_path()
    path = getattr(where, "path", where)  # a RunStore has .path
    if "://" in str(path):
        return Path(os.environ.get("EXPLORER_WEIGHTS_DIR") or "weights")
    path = Path(path)
    if str(path) == ":memory:":
        raise ConfigError("a run store in memory has no folder to keep weights in; open the "
                          "store from a file.")
    if path.is_dir():
        return path
    return path.parent / "weights"


def weights_path(where: Any, run_id: int, epoch: int | None = None) -> Path:
    """Where a run's final weights (or one epoch's) are kept; the file may not exist."""
    name = f"run-{int(run_id)}" + (f"-epoch{int(epoch)}" if epoch is not None else "") + SUFFIX
    return weights_dir(where) / name


def _note_path(folder: Path, run_id: int) -> Path:
    return folder / f"run-{int(run_id)}.note.txt"


def _add_note(folder: Path, run_id: int, sentence: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(_note_path(folder, run_id), "a", encoding="utf-8") as f:
        f.write(sentence.strip() + "\n")


def weights_note(where: Any, run_id: int) -> str | None:
    """The sentences recorded about a run's weights (refused or deleted), or None."""
    path = _note_path(weights_dir(where), run_id)
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").strip() or None


def _files(folder: Path) -> list[tuple[Path, int, int | None, os.stat_result]]:
    """(path, run id, epoch or None, stat) of every weights file in the folder."""
    out = []
    if folder.is_dir():
        for p in folder.iterdir():
            m = _NAME.match(p.name)
            if m:
                try:
                    st = p.stat()
                except FileNotFoundError:  # deleted meanwhile by another process
                    continue
                out.append((p, int(m.group(1)), None if m.group(2) is None else int(m.group(2)),
                            st))
    return out


def run_files(where: Any, run_id: int) -> list[Path]:
    """A run's weights files: the epochs in order, then the final one."""
    files = [(e if e is not None else 1 << 30, p) for p, r, e, _ in _files(weights_dir(where))
             if r == int(run_id)]
    return [p for _, p in sorted(files)]


def _mb(n: int) -> str:
    return f"{n / MB:,.1f} MB" if n >= MB / 10 else f"{n / 1000:,.1f} kB"


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (about the size of its weights file)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors needs contiguous, unshared CPU tensors; training may leave channels_last.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_weights(model: nn.Module, where: Any, run_id: int, *, epoch: int | None = None,
                 spec: Any = None, limits: WeightsLimits | None = None,
                 extra: Mapping[str, str] | None = None) -> SaveResult:
    """Save a run's weights (final, or one epoch's) within the size limits.

    Refuses a final file over the per-run limit (an epoch's: counting the run's other files) or
    over the server limit; otherwise deletes the oldest other files until the folder fits.
    Every refusal and deletion writes a sentence to the affected run's note (``weights_note``).
    """
    meta = {"format": "pt", "run_id": str(int(run_id)), "saved_at": f"{time.time():.3f}"}
    if epoch is not None:
        meta["epoch"] = str(int(epoch))
    if spec is not None:
        meta["spec"] = spec if isinstance(spec, str) else json.dumps(
            spec.to_dict() if hasattr(spec, "to_dict") else dict(spec), sort_keys=True)
    meta.update(dict(extra or {}))
    return store_weights_bytes(st_save(_tensors(model), metadata=meta), where, run_id,
                               epoch=epoch, limits=limits)


def store_weights_bytes(data: bytes, where: Any, run_id: int, *, epoch: int | None = None,
                        limits: WeightsLimits | None = None) -> SaveResult:
    """Keep a safetensors file's bytes as a run's weights, within the limits (see save_weights).

    Used for imported runs: the bytes are checked to be safetensors first.
    """
    weights_from_bytes(data, "the weights")  # refuse anything that is not safetensors
    limits = limits or WeightsLimits.from_env()
    folder = weights_dir(where)
    target = weights_path(folder, run_id, epoch)
    what = f"epoch {epoch}'s weights" if epoch is not None else "final weights"
    size = len(data)
    files = _files(folder)
    mine = sum(st.st_size for p, r, _, st in files if r == int(run_id) and p != target)
    if size + (mine if epoch is not None else 0) > limits.per_run:
        sentence = (f"Run {run_id}'s {what} ({_mb(size)}) were not kept: one run may keep at most "
                    f"{_mb(limits.per_run)} of weights (EXPLORER_WEIGHTS_MAX_RUN_MB).")
        _add_note(folder, run_id, sentence)
        return SaveResult(None, size, (sentence,))
    if size > limits.total:
        sentence = (f"Run {run_id}'s {what} ({_mb(size)}) were not kept: the server keeps at most "
                    f"{_mb(limits.total)} of weights in all (EXPLORER_WEIGHTS_MAX_TOTAL_MB).")
        _add_note(folder, run_id, sentence)
        return SaveResult(None, size, (sentence,))
    notes: list[str] = []
    used = sum(st.st_size for p, _, _, st in files if p != target)
    # Oldest first; the run's own final weights go last, its epochs like anyone's.
    order = sorted((f for f in files if f[0] != target),
                   key=lambda f: (f[1] == int(run_id) and f[2] is None, f[3].st_mtime))
    for p, r, e, st in order:
        if used + size <= limits.total:
            break
        p.unlink(missing_ok=True)
        used -= st.st_size
        gone = f"epoch {e}'s weights" if e is not None else "final weights"
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        sentence = (f"Run {r}'s {gone} were deleted on {when} to make room for run {run_id}'s: "
                    f"the server keeps at most {_mb(limits.total)} of weights in all "
                    f"(EXPLORER_WEIGHTS_MAX_TOTAL_MB), oldest deleted first.")
        _add_note(folder, r, sentence)
        notes.append(sentence)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)  # readers never see half a file
    return SaveResult(target, size, tuple(notes))


def export_weights(where: Any, run_id: int) -> str | None:
    """A run's final weights as base64 text, for a run's JSON export; None when it has none."""
    path = weights_path(where, run_id)
    return base64.b64encode(path.read_bytes()).decode("ascii") if path.is_file() else None


def import_weights(text: str, where: Any, run_id: int,
                   limits: WeightsLimits | None = None) -> SaveResult:
    """Keep base64 weights from a run's JSON export as run ``run_id``'s final weights."""
    try:
        data = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise ConfigError("the run's weights in this file are not base64 text; export the run "
                          "again.") from None
    return store_weights_bytes(data, where, run_id, limits=limits)


def read_weights(path: str | Path) -> Weights:
    """Load a safetensors file (no code runs); a broken or missing file is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no weights file at {path}; the run may have kept none (see its "
                          f"note) or the file was deleted.")
    data = path.read_bytes()
    return weights_from_bytes(data, str(path))


def weights_from_bytes(data: bytes, name: str = "the uploaded file") -> Weights:
    """A safetensors file's content as Weights."""
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{name} is not a safetensors weights file ({exc}).") from None
    return Weights(tensors, dict(header.get("__metadata__") or {}))


def load_weights(where: Any, run_id: int | None = None, epoch: int | None = None) -> Weights:
    """A run's weights (``where`` = store/folder, with ``run_id``) or a file (``where`` alone)."""
    if run_id is None:
        return read_weights(where)
    return read_weights(weights_path(where, run_id, epoch))


def load_into(model: nn.Module, weights: Weights | Mapping[str, torch.Tensor]) -> nn.Module:
    """Copy the weights into ``model`` (names and shapes must match exactly); returns it."""
    state = weights.state_dict if isinstance(weights, Weights) else dict(weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"these weights do not fit this model ({first}); load them into the "
                          f"network they were trained with.") from None
    return model


def model_from_weights(weights: Weights) -> tuple[Any, nn.Module]:
    """Rebuild the model saved in the weights' metadata: (spec, model in eval mode)."""
    from explorer.models import build

    spec = weights.spec
    if spec is None:
        raise ConfigError("this weights file carries no spec, so the network cannot be rebuilt; "
                          "use a file saved by CNN Explorer.")
    return spec, load_into(build(spec), weights).eval()


def delete_weights(where: Any, run_id: int) -> int:
    """Delete a run's weights files and note; returns how many files went."""
    folder = weights_dir(where)
    gone = 0
    for p in run_files(folder, run_id):
        p.unlink(missing_ok=True)
        gone += 1
    _note_path(folder, run_id).unlink(missing_ok=True)
    return gone


class WeightsCallback:
    """Training callback: keep the final weights of a completed or stopped run.

    With ``every_epoch`` (default: when the model's weights are at most the epoch limit,
    EXPLORER_WEIGHTS_EPOCH_MAX_MB) it also keeps each epoch's weights, so a student can watch the
    effective receptive field change. ``result`` holds the last SaveResult (its notes say what
    was refused or deleted).
    """

    def __init__(self, store_path_or_dir: Any, run_id: int, spec: Any = None,
                 every_epoch: bool | None = None, limits: WeightsLimits | None = None,
                 dataset: str | None = None) -> None:
        self.where = weights_dir(store_path_or_dir)
        self.run_id, self.spec, self.every_epoch = int(run_id), spec, every_epoch
        # The dataset's name goes into the file, so that `predict` normalises as training did.
        self.extra = {"dataset": dataset} if dataset else {}
        self.limits = limits
        self.result: SaveResult | None = None
        self.notes: list[str] = []

    def _save(self, model: nn.Module, epoch: int | None) -> None:
        self.result = save_weights(model, self.where, self.run_id, epoch=epoch, spec=self.spec,
                                   limits=self.limits, extra=self.extra)
        self.notes.extend(self.result.notes)

    def on_epoch_end(self, ctx: Any, metrics: Mapping[str, float]) -> None:
        """Keep this epoch's weights when epochs are kept."""
        every = self.every_epoch
        if every is None:
            limit = (self.limits or WeightsLimits.from_env()).epoch_model
            every = state_dict_bytes(ctx.model) <= limit
        if every:
            self._save(ctx.model, int(ctx.epoch))

    def on_run_end(self, ctx: Any, status: str) -> None:
        """Keep the final weights of a completed or stopped run (a failed one keeps none)."""
        if status in ("completed", "stopped"):
            self._save(ctx.model, None)


__all__ = ["SaveResult", "Weights", "WeightsCallback", "WeightsLimits", "delete_weights",
           "export_weights", "import_weights", "load_into", "load_weights", "model_from_weights",
           "read_weights", "run_files", "save_weights", "state_dict_bytes", "store_weights_bytes",
           "weights_dir", "weights_from_bytes", "weights_note", "weights_path"]

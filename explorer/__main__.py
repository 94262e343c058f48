"""Command-line interface: ``python -m explorer presets | summary | conv | bench``.

A stable interface for scripts and handouts. A bad argument or spec prints one sentence to stderr
and exits with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from explorer import inspect_cli
from explorer.errors import ConfigError
from explorer.receptive import WHOLE_IMAGE, rf_caption, rf_text


def _shape(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(p) for p in text.replace("x", ",").replace("×", ",").split(","))
    except ValueError:
        raise ConfigError(f"--input must be C,H,W such as 1,28,28, not {text!r}.") from None
    if len(parts) != 3:
        raise ConfigError(f"--input must be three numbers C,H,W such as 1,28,28, not {text!r}.")
    return parts  # type: ignore[return-value]


def load_spec(name_or_path: str) -> tuple[str, Any]:
    """A preset name or a spec JSON file; returns (display name, spec)."""
    from explorer.io import MAX_SPEC_BYTES, read_specs
    from explorer.registry import PRESETS, get_preset

    if name_or_path in PRESETS:
        return name_or_path, get_preset(name_or_path).spec
    path = Path(name_or_path)
    if path.suffix.lower() == ".json" or path.exists():
        if not path.is_file():
            raise ConfigError(f"no spec file at {path}; give a preset name (python -m explorer "
                              f"presets lists them) or the path of a spec JSON file.")
        try:
            with path.open("rb") as f:  # read one byte past the limit, never a whole huge file
                data = f.read(MAX_SPEC_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"{path} cannot be read ({exc.strerror or exc}).") from None
        # The same checks as an upload: size, UTF-8, JSON depth and digits, spec, cost.
        specs = read_specs(data, path.name)
        if len(specs) != 1:
            raise ConfigError(f"{path} holds {len(specs)} models; summary takes a file with one "
                              f"spec.")
        return path.stem, next(iter(specs.values()))
    return name_or_path, get_preset(name_or_path).spec  # raises, listing the known names


def _int(value: Any) -> int | None:
    """A table number as an int; None where the analysis has none (e.g. no receptive field)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _pair(h: Any, w: Any) -> list[int] | None:
    """[height, width]; None where the layer's output is no longer a map."""
    h, w = _int(h), _int(w)
    return None if h is None else [h, h if w is None else w]


def summary_json(name: str, analysis: Any) -> dict[str, Any]:
    """The documented JSON of ``summary``: totals and one object per layer.

    ``receptive_field`` and ``jump`` are [height, width] in input pixels: the network's are
    those of one unit of its last spatial feature map (``explorer.receptive``), the same number
    as the layer table's whole-network row; a layer past that map has null.
    """
    t = analysis.totals
    layers = [
        {"name": r["name"], "type": r["type"], "depth": int(r["depth"]),
         "output_shape": None if r["output_shape"] is None else list(r["output_shape"]),
         "params": int(r["params"]), "macs": int(r["macs"]),
         "macs_lecture": int(r["macs_lecture"]),
         "receptive_field": _pair(r["receptive_field"], r["receptive_field_w"]),
         "jump": _pair(r["jump"], r["jump_w"])}
        for r in analysis.table.to_dict("records")]
    return {"name": name, "input": list(analysis.input_shape),
            "total_params": int(t["total_params"]), "trainable_params": int(t["trainable_params"]),
            "total_macs": int(t["total_macs"]), "total_macs_lecture": int(t["total_macs_lecture"]),
            "receptive_field": _pair(t["receptive_field"], t["receptive_field_w"]),
            "jump": _pair(t["receptive_field_jump"], t["receptive_field_jump_w"]),
            "receptive_field_at": t["receptive_field_at"],
            "receptive_field_note": f"{t['receptive_field_note']}. {WHOLE_IMAGE}",
            "macs_note": t["macs_note"], "layers": layers}


def _pair_text(pair: list[int] | None) -> str:
    if pair is None:
        return "-"
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}×{pair[1]}"


def cmd_presets(args: argparse.Namespace) -> None:
    from explorer.families import get_family
    from explorer.registry import PRESETS

    family = getattr(args, "family", None)
    if family is not None:
        get_family(family)  # an unknown name is a sentence listing the known ones
    for p in PRESETS.values():
        if family is None or p.family == family:
            print(f"{p.name}\t{p.description}")


def cmd_families(_args: argparse.Namespace) -> None:
    from explorer.families import families

    for f in families():
        print(f"{f.name}\t{f.title}\t{', '.join(p.name for p in f.presets)}")


def cmd_summary(args: argparse.Namespace) -> None:
    from explorer.analysis import analyze

    name, spec = load_spec(args.spec)
    changes: dict[str, Any] = {}
    if args.input:
        changes["input_shape"] = _shape(args.input)
    if args.classes is not None:
        changes["num_classes"] = args.classes
    if changes:
        spec = dataclasses.replace(spec, **changes)
    analysis = analyze(spec)
    if args.format == "json":
        print(json.dumps(summary_json(name, analysis), indent=2))
    elif args.format == "csv":
        sys.stdout.write(analysis.table.to_csv(index=False))
    else:
        table = analysis.table
        view = table.assign(
            name=["  " * max(int(d) - 1, 0) + n
                  for n, d in zip(table["name"], table["depth"], strict=True)],
            receptive_field=[_pair_text(_pair(h, w)) for h, w in
                             zip(table["receptive_field"], table["receptive_field_w"],
                                 strict=True)],
            jump=[_pair_text(_pair(h, w)) for h, w in zip(table["jump"], table["jump_w"],
                                                          strict=True)])
        cols = ["name", "type", "output_shape", "params", "macs", "receptive_field", "jump"]
        print(view[cols].to_string(index=False))
        t = analysis.totals
        print(f"\n{name}: input {'×'.join(map(str, analysis.input_shape))}, "
              f"{t['total_params']:,} parameters, {t['total_macs']:,} multiply-adds "
              f"(torchinfo), {t['total_macs_lecture']:,} (lecture), receptive field "
              f"{rf_text(t)} ({t['receptive_field_at']})")
        if caption := rf_caption(t):
            print(caption)


def cmd_conv(args: argparse.Namespace) -> None:
    from explorer.convmath import conv_layer

    result = conv_layer(_shape(args.input), args.out, args.kernel, args.stride, args.padding,
                        args.dilation, args.groups, not args.no_bias)
    if args.format == "json":
        print(json.dumps(result.to_dict(), indent=2))
    else:
        for line in result.explain():
            print(line)


def cmd_bench(args: argparse.Namespace) -> None:
    from explorer.analysis import benchmark_analyze
    from explorer.models import build

    name, spec = load_spec(args.preset)
    if args.input:
        spec = dataclasses.replace(spec, input_shape=_shape(args.input))
    figures = benchmark_analyze(build(spec), spec.input_shape, repeats=args.repeats)
    print(json.dumps({"preset": name, "input": list(spec.input_shape), **figures}, indent=2))


def cmd_worker(args: argparse.Namespace) -> None:
    from explorer.worker import main as worker_main

    worker_main(args.db, args.device, args.id, args.parent, args.threads, args.max_runs)


def cmd_ray_dispatch(args: argparse.Namespace) -> None:
    from explorer.ray_runner import main as dispatch_main

    dispatch_main(args.db, args.address)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one sentence on stderr (and exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message}; see `{self.prog} --help`.\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m explorer", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    pr = sub.add_parser("presets", help="one preset name per line, a tab, a description")
    pr.add_argument("--family", help="only this family's presets (see `families`)")
    sub.add_parser("families", help="one family per line: name, title, its presets")

    s = sub.add_parser("summary", help="layer table and totals of a preset or spec JSON file")
    s.add_argument("spec", help="a preset name or a spec .json file")
    s.add_argument("--input", help="input shape C,H,W (e.g. 1,96,96)")
    s.add_argument("--classes", type=int, help="number of classes")
    s.add_argument("--format", choices=["table", "csv", "json"], default="table")

    c = sub.add_parser("conv", help="output shape, parameters and multiply-adds of one conv")
    c.add_argument("--input", required=True, help="input shape C,H,W")
    c.add_argument("--out", type=int, required=True, help="number of filters")
    c.add_argument("--kernel", type=int, required=True)
    c.add_argument("--stride", type=int, default=1)
    c.add_argument("--padding", type=int, default=0)
    c.add_argument("--dilation", type=int, default=1)
    c.add_argument("--groups", type=int, default=1)
    c.add_argument("--no-bias", action="store_true")
    c.add_argument("--format", choices=["table", "json"], default="table")

    b = sub.add_parser("bench", help="benchmarks that print JSON figures")
    bsub = b.add_subparsers(dest="what", required=True, parser_class=_Parser)
    ba = bsub.add_parser("analyze", help="analyze() against torchinfo.summary alone")
    ba.add_argument("--preset", default="resnet152")
    ba.add_argument("--input", help="input shape C,H,W")
    ba.add_argument("--repeats", type=int, default=5)

    w = sub.add_parser("worker", help="train the run store's queued runs (the app starts its "
                                      "own workers; this one is started by hand)")
    w.add_argument("--db", help="the run store, a SQLite file or a postgresql:// URL "
                   "($EXPLORER_RUNS_DB, else ./runs.sqlite; keep a password in the variable)")
    w.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    w.add_argument("--threads", type=int, help="torch threads (default: every core)")
    w.add_argument("--max-runs", type=int, help="end after this many runs")
    w.add_argument("--id", help=argparse.SUPPRESS)  # given by the app's worker pool
    w.add_argument("--parent", type=int, help=argparse.SUPPRESS)  # the pool's pid
    inspect_cli.add_parser(sub)

    r = sub.add_parser("ray-dispatch", help="train the run store's queued runs as tasks on a Ray "
                                            "cluster (the app starts its own when $RAY_ADDRESS "
                                            "is set)")
    r.add_argument("--db", help="the run store, a SQLite file or a postgresql:// URL "
                   "($EXPLORER_RUNS_DB, else ./runs.sqlite; keep a password in the variable)")
    r.add_argument("--address", help="the Ray cluster, host:port ($RAY_ADDRESS)")
    return p


COMMANDS = {"presets": cmd_presets, "families": cmd_families, "summary": cmd_summary,
            "conv": cmd_conv, "bench": cmd_bench, "worker": cmd_worker,
            "ray-dispatch": cmd_ray_dispatch, "predict": inspect_cli.run}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `python -m explorer presets | head`
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``onebit`` command line, thin over the API: train, eval, data, compare, sensitivity, report.

Bad input ends in one sentence on stderr and exit status 2, never a traceback from deep inside.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import NoReturn

from onebit.errors import OnebitError
from onebit.fileio import atomic_write

log = logging.getLogger("onebit")

EPILOG = """\
examples:
  onebit train configs/fmnist_mlp.toml                     # one run, method from the config
  onebit train configs/fmnist_mlp.toml --twin              # and its full-precision twin
  onebit train configs/fmnist_mlp.toml --set method.name=bwn --set train.epochs=20 --seeds 0 1 2
  onebit train --resume runs/fmnist_mlp/bc-s0-20261122-101500   # continue a killed run
  onebit eval runs/fmnist_mlp/bc-s0-20261122-101500        # test accuracy of its best weights
"""


def _methods_help() -> str:
    from onebit.methods import METHODS, method_preset

    rows = [(name, method_preset(name)) for name in METHODS]
    lines = [f"  {name:<10} {row.title}  [{row.paper}]" for name, row in rows]
    return "methods (method.name):\n" + "\n".join(lines)


def _models_help() -> str:
    from onebit.models import MODELS

    return "models (model.name): " + ", ".join(MODELS)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(
        prog="onebit",
        description="Train, evaluate and compare binary-weight neural networks.",
        formatter_class=fmt,
        epilog=EPILOG,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train a binarized network (and optionally its float twin)",
        formatter_class=fmt,
        description="Train the model, data and method a TOML config names; evaluation is always "
        "on the hard-binarized model.",
        epilog=_methods_help() + "\n" + _models_help() + "\n\n" + EPILOG,
    )
    t.add_argument("config", nargs="?", help="TOML config file (optional with --resume)")
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.lr=0.01 or model.hidden=[1024,1024]",
    )
    t.add_argument("--seeds", type=int, nargs="+", metavar="N", help="train once per seed")
    t.add_argument(
        "--methods",
        metavar="A,B,...",
        help="train each of these methods under the same config (their options reset to defaults)",
    )
    t.add_argument(
        "--resume",
        metavar="RUN",
        help="continue the run in folder RUN (its own config, seed and method; --data-root may "
        "say where its data lives now)",
    )
    t.add_argument("--twin", action="store_true", help="also train the full-precision twin")
    t.add_argument("--out", metavar="DIR", help="runs folder (default: runs)")
    t.add_argument("--data-root", metavar="DIR", help="data folder (default: $ONEBIT_DATA, ...)")
    t.add_argument("--json", metavar="FILE", help="write the result rows as JSON to FILE")
    t.add_argument(
        "--record",
        metavar="DIR",
        help="also copy the runs' light files, table and command into DIR (e.g. records/NAME)",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="evaluate a trained run on its test set")
    e.add_argument("run", help="run folder or checkpoint (.pt)")
    e.add_argument("--last", action="store_true", help="use the last epoch, not the best")
    e.add_argument("--data-root", metavar="DIR", help="data folder")

    d = sub.add_parser("data", help="find or download datasets")
    d.add_argument("action", choices=("where", "download"))
    d.add_argument("name", help="mnist, fashion-mnist, cifar10 or linux-kernel")
    d.add_argument("--root", metavar="DIR", help="data folder")

    c = sub.add_parser(
        "compare",
        help="train several methods x seeds under one config, side by side",
        formatter_class=fmt,
        description="Train every method on the config's model, data and budget, once per seed, "
        "as a grid of resumable runs in <out>/<name>/<method>-s<seed>/ executed by worker "
        "processes; a finished run is never redone, so running the same command again after a "
        "kill finishes the grid. Writes results.md/.csv/.json and plots/ into <out>/<name>/.",
        epilog=_methods_help()
        + "\n\nexamples:\n  onebit compare configs/fmnist_mlp.toml --methods fp,bc,bwn --seeds 0 1 2\n"
        "  onebit compare configs/fmnist_mlp.toml --methods fp,bc --seeds 0 1 --workers 1 "
        "--set train.epochs=2 --out runs/quick\n",
    )
    c.add_argument("config", help="TOML config file")
    c.add_argument(
        "--methods",
        required=True,
        metavar="A,B,...",
        help="methods to compare (options reset to defaults unless the config's [method] names it)",
    )
    c.add_argument(
        "--seeds", type=int, nargs="+", metavar="N", help="seeds (default: the config's)"
    )
    c.add_argument(
        "--workers",
        type=int,
        default=2,
        metavar="N",
        help="worker processes (default 2; 1: in-process)",
    )
    c.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.epochs=20",
    )
    c.add_argument("--out", metavar="DIR", help="runs folder (default: the config's out, runs)")
    c.add_argument("--data-root", metavar="DIR", help="data folder")
    c.add_argument("--no-plots", action="store_true", help="write the tables only")
    c.add_argument(
        "--record",
        metavar="DIR",
        help="also copy config, environment, metrics, tables, plots and the command into DIR "
        "(e.g. records/2026-11-22_fmnist_mlp); a record of this grid made before is continued: "
        "its runs are restored, not trained again, and the record is rewritten with the new ones",
    )

    sn = sub.add_parser(
        "sensitivity",
        help="sensitivity pre-training: train one net per layer with only that layer binary",
        formatter_class=fmt,
        description="For each binarizable layer, train the config's model with only that layer "
        "binary (method iterative, order = [layer]) for epochs_per_layer epochs and record its "
        "validation accuracy; write the ranking to <out>/<name>/sensitivity-s<seed>/"
        "sensitivity.json (read by order = sensitivity-ascending/-descending, e.g. methods "
        "iterative-sens-asc and iterative-sens-desc) and a plot of accuracy per layer. Probes "
        "run in parallel worker processes; finished probes are not redone. onebit compare makes "
        "and reuses the same folder for the sensitivity-guided methods.",
        epilog="examples:\n  onebit sensitivity configs/mnist_mlp_iterative.toml --seeds 0 1 2\n"
        "  onebit train configs/mnist_mlp_iterative.toml --set method.name=iterative-sens-asc "
        "--set method.ranking=runs/mnist_mlp_iterative/sensitivity-s0/sensitivity.json\n"
        "  onebit compare configs/mnist_mlp_iterative.toml --methods fp,iterative,"
        "iterative-sens-asc   # makes the ranking itself\n",
    )
    sn.add_argument("config", help="TOML config file (train.epochs: the budget the ranking serves)")
    sn.add_argument(
        "--seeds", type=int, nargs="+", metavar="N", help="seeds (default: the config's)"
    )
    sn.add_argument(
        "--workers", type=int, default=2, metavar="N", help="worker processes (default 2)"
    )
    sn.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. method.epochs_per_layer=2",
    )
    sn.add_argument("--out", metavar="DIR", help="runs folder (default: the config's out, runs)")
    sn.add_argument("--data-root", metavar="DIR", help="data folder")

    r = sub.add_parser(
        "report",
        help="rebuild tables and plots from run folders; regenerate the README results table",
        formatter_class=fmt,
        description="Rebuild results.md/.csv/.json and plots/ from run folders (or comparison "
        "folders holding them) without training anything; or, with --readme, regenerate the "
        "README's results table from records/.",
        epilog="examples:\n  onebit report runs/fmnist_mlp\n"
        "  onebit report runs/a/bc-s0 runs/b/fp-s0 --out reports/ab\n"
        "  onebit report --readme README.md --records records --check\n",
    )
    r.add_argument("runs", nargs="*", metavar="RUNS", help="run folders or comparison folders")
    r.add_argument("--out", metavar="DIR", help="where the report goes (default: the runs' folder)")
    r.add_argument("--no-plots", action="store_true", help="write the tables only")
    r.add_argument("--readme", metavar="FILE", help="regenerate the results table of FILE")
    r.add_argument(
        "--records", metavar="DIR", help="records folder, with --readme (default: records)"
    )
    r.add_argument(
        "--check", action="store_true", help="with --readme: exit 1 if FILE is out of date"
    )

    pk = sub.add_parser(
        "pack",
        help="pack a trained run to 1 bit per weight (a .onebit file)",
        description="Pack the best weights of a run (binary layers as bits, BatchNorm folded) into "
        "a .onebit file that loads without torch or the training code.",
    )
    pk.add_argument("run", help="run folder or checkpoint (.pt)")
    pk.add_argument(
        "-o", "--output", metavar="FILE", help="output file (default: RUN/model.onebit)"
    )
    pk.add_argument("--last", action="store_true", help="pack the last epoch, not the best")
    pk.add_argument(
        "--onnx", metavar="FILE", help="also export an ONNX float graph (±scale weights)"
    )

    ru = sub.add_parser(
        "run",
        help="predict with a packed model",
        description="Predict classes for inputs from .npz (x[, y]), IDX or image files; when the "
        "files carry labels, also print the accuracy.",
    )
    ru.add_argument("model", help=".onebit file")
    ru.add_argument("inputs", nargs="+", help=".npz, IDX or image files")
    ru.add_argument("--batch-size", type=int, default=256)
    ru.add_argument("--json", action="store_true", help="one JSON object per input")

    be = sub.add_parser(
        "bench",
        help="time a packed model against torch and onnxruntime on the same graph",
        description="Seconds per batch of the packed model (exact, and with 8-bit activations "
        "where it has binary-weight layers) against its float twin rebuilt from the file's graph: "
        "torch fp32, torch bf16 (where the CPU has it), onnxruntime fp32 and int8, all measured "
        "in the same run; ratios > 1 mean the packed model is faster; a per-op breakdown.",
    )
    be.add_argument("model", help=".onebit file")
    be.add_argument("--threads", type=int, nargs="+", default=[1, 2], metavar="N")
    be.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64], metavar="B")
    be.add_argument("--repeats", type=int, default=20)
    be.add_argument("--out", metavar="FILE", help="also write the results as JSON")
    return p


def _methods(text: str) -> list[str]:
    """``--methods a,b,c`` as names, each known, none repeated."""
    from onebit.methods import method_preset

    names = [m.strip() for m in text.split(",")]
    if not names or any(not m for m in names):
        raise OnebitError("--methods expects method names separated by commas, e.g. fp,bc,bwn.")
    if len(set(names)) != len(names):
        raise OnebitError(f"--methods names a method twice ({text}).")
    for m in names:
        method_preset(m)  # an unknown name raises with the accepted list
    return names


def _seeds(seeds: list[int] | None) -> None:
    if seeds is not None and (len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds)):
        raise OnebitError(f"--seeds expects distinct non-negative integers, got {seeds}.")


def _check_outputs(
    args: argparse.Namespace, out: str | None, *, continue_record: bool = False
) -> None:
    """Every place the command will write, checked before anything trains: a result must not
    be lost to a bad path after hours of training (``continue_record``: ``--record`` may name a
    record that the command continues, as ``onebit compare`` does)."""
    from onebit.fileio import check_folder, check_writable

    if out is not None:
        check_folder(out, "--out")
    if getattr(args, "json", None):
        check_writable(args.json)
    if getattr(args, "record", None):
        from onebit.experiments.records import check_record_folder, check_record_to_continue

        (check_record_to_continue if continue_record else check_record_folder)(args.record)


def _kept(run_dirs: list[Path]) -> str:
    return ", ".join(str(d) for d in run_dirs if d is not None) or "their run folders"


def _train(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    from onebit.experiments.config import Config, load_config
    from onebit.experiments.report import format_table, markdown_table, summarize, table_columns
    from onebit.experiments.runs import load_data, prepare_run, train_prepared

    if args.resume:
        given = [
            flag
            for flag, value in (
                ("CONFIG", args.config),
                ("--set", args.overrides),
                ("--seeds", args.seeds),
                ("--methods", args.methods),
                ("--twin", args.twin),
                ("--out", args.out),
            )
            if value
        ]
        if given:
            raise OnebitError(
                "--resume continues a run with its own config, seed, method and folder; drop "
                + ", ".join(given)
                + "."
            )
        run_dir = Path(args.resume)
        cfg_file = run_dir / "config.json"
        if not cfg_file.is_file():
            raise OnebitError(f"{run_dir} is not a onebit run folder (no config.json).")
        try:
            cfg = Config.from_dict(json.loads(cfg_file.read_text()))
        except (ValueError, UnicodeDecodeError, AttributeError, TypeError):
            raise OnebitError(f"{cfg_file} is not a readable onebit config (bad JSON).") from None
        if args.data_root:  # where the data is read from does not change the run
            cfg.data.root = args.data_root
        jobs: list[tuple[Config, int, Path | None, bool]] = [(cfg, cfg.train.seed, run_dir, True)]
        _check_outputs(args, None)
    else:
        if args.config is None:
            raise OnebitError("give a config file (e.g. configs/fmnist_mlp.toml) or --resume RUN.")
        overrides = list(args.overrides)
        if args.out:
            overrides.append(f"out={json.dumps(args.out)}")
        if args.data_root:
            overrides.append(f"data.root={json.dumps(args.data_root)}")
        cfg = load_config(args.config, overrides)
        _seeds(args.seeds)
        seeds = args.seeds or [cfg.train.seed]
        names = _methods(args.methods) if args.methods else [cfg.method.name]
        if args.twin and "fp" not in names:
            names.append("fp")
        cfgs = [
            cfg
            if n == cfg.method.name
            else Config.from_dict({**cfg.to_dict(), "method": {"name": n}})
            for n in names
        ]
        jobs = [(c, s, None, False) for c in cfgs for s in seeds]
        _check_outputs(args, cfg.out)
    data = load_data(jobs[0][0], progress=not args.no_progress)
    rows: list[dict] = []
    run_dirs: list[Path] = []
    for c, seed, run_dir, resume in jobs:
        try:
            prepared = prepare_run(
                c, seed, run_dir=run_dir, resume=resume, data=data, new_folder=run_dir is None
            )
            where = prepared.run_dir
            log.info("training %s (seed %d) in %s", c.method.name, seed, where)
            try:
                res = train_prepared(prepared, progress=not args.no_progress)
            except KeyboardInterrupt:
                if where is not None:
                    log.error("interrupted; continue with: onebit train --resume %s", where)
                return 130
        except OnebitError as e:
            if run_dirs:
                raise OnebitError(
                    f"{str(e).rstrip('.')}; the runs that finished are kept in {_kept(run_dirs)}."
                ) from None
            raise
        rows.append(res.row())
        run_dirs.append(res.run_dir)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, only the main process reports
        return 0
    summary = summarize(rows)
    print(markdown_table(format_table(summary), table_columns(summary)))
    return _write_results(args, rows, run_dirs, argv)


def _write_results(
    args: argparse.Namespace, rows: list[dict], run_dirs: list[Path], argv: list[str] | None
) -> int:
    """--json and --record after training; if one cannot be written (a disk that filled up),
    say where the results are kept instead of losing them."""
    try:
        if args.json:
            atomic_write(args.json, json.dumps(rows, indent=2) + "\n")
        if args.record:
            from onebit.experiments.records import write_record

            write_record(args.record, rows, run_dirs, sys.argv[1:] if argv is None else argv)
    except OnebitError as e:
        print(
            f"onebit: error: {str(e).rstrip('.')}; the results are kept in {_kept(run_dirs)} "
            "(summary.json).",
            file=sys.stderr,
        )
        return 2
    return 0


def _eval(args: argparse.Namespace) -> int:
    from onebit.experiments.runs import load_data, load_run
    from onebit.training import evaluate

    cfg, model, _method, _state = load_run(args.run, "last" if args.last else "best")
    if args.data_root:
        cfg.data.root = args.data_root
    data = load_data(cfg)
    if tuple(data.input_shape) != tuple(_state["input_shape"]):
        raise OnebitError(
            f"the data at {data.source} has examples of shape {tuple(data.input_shape)} but "
            f"{args.run} was trained on {tuple(_state['input_shape'])}; give its data."
        )
    loss, acc = evaluate(model, data.test, data, cfg.train.eval_batch_size, cfg.train.loss)
    row = {"run": str(args.run), "test_acc": acc, "test_loss": loss}
    if cfg.train.loss == "ce" and data.test.y.dim() > 1:  # a language model: bits per character
        row["test_bpc"] = loss / math.log(2)
    print(json.dumps(row))
    return 0


def _compare(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    from onebit.experiments.compare import compare
    from onebit.experiments.config import load_config
    from onebit.experiments.report import format_table, markdown_table, table_columns

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={json.dumps(args.out)}")
    if args.data_root:
        overrides.append(f"data.root={json.dumps(args.data_root)}")
    cfg = load_config(args.config, overrides)
    _seeds(args.seeds)
    seeds = args.seeds if args.seeds is not None else [cfg.train.seed]
    methods = _methods(args.methods)
    if args.workers < 1:
        raise OnebitError(f"--workers must be at least 1, got {args.workers}.")
    _check_outputs(args, cfg.out, continue_record=True)

    def show_plan(jobs: list) -> None:
        log.info("comparing %d runs in %s/%s: %s", len(jobs), cfg.out, cfg.name,
                 ", ".join(j.key for j in jobs))  # fmt: skip

    held = []
    if args.record:
        from onebit.experiments.records import record_grid

        held = record_grid(args.record)  # the record's runs before this call adds any
    try:
        res = compare(
            cfg,
            methods,
            seeds,
            workers=args.workers,
            plots=not args.no_plots,
            on_plan=show_plan,
            restore=args.record,
        )
    except KeyboardInterrupt:
        log.error("interrupted; run the same command again to continue where it stopped")
        return 130
    table = res.results["table"]
    print(markdown_table(format_table(table), table_columns(table)))
    print(f"\nresults: {res.folder / 'results.md'}")
    if res.failed:
        for key, why in res.failed.items():
            print(f"onebit: error: run {key} failed: {why}", file=sys.stderr)
        if args.record:
            print(f"onebit: error: the record {args.record} is written once every run finished.",
                  file=sys.stderr)  # fmt: skip
        print(
            "onebit: error: run the same command again to retry the failed runs.", file=sys.stderr
        )
        return 1
    if args.record:
        from onebit.experiments.records import write_record

        try:
            write_record(
                args.record,
                res.rows,
                [j.run_dir for j in res.jobs if (j.run_dir / "summary.json").is_file()],
                _grid_argv(sys.argv[1:] if argv is None else argv, methods, seeds, held),
                title=cfg.name,
                config_file=args.config,
                report_dir=res.folder,
                replace=True,
            )
        except OnebitError as e:
            print(
                f"onebit: error: {str(e).rstrip('.')}; the results are kept in {res.folder}.",
                file=sys.stderr,
            )
            return 2
        print(f"record: {args.record}")
    return 0


def _grid_argv(
    argv: list[str], methods: list[str], seeds: list[int], held: list[tuple[str, int]]
) -> list[str]:
    """``argv`` with ``--methods`` and ``--seeds`` widened to the grid a continued record spans
    (its own runs and this call's): the command that remakes the whole record."""
    all_methods = list(dict.fromkeys([*methods, *(m for m, _ in held)]))
    all_seeds = sorted({*seeds, *(s for _, s in held)})
    if all_methods == methods and all_seeds == sorted(seeds):
        return list(argv)
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a == "--methods":
            out += [a, ",".join(all_methods)]
            i += 1  # its value
        elif a.startswith("--methods="):
            out.append("--methods=" + ",".join(all_methods))
        elif a == "--seeds":
            out += [a, *map(str, all_seeds)]
            while i < len(argv) and argv[i].isdigit():  # its values
                i += 1
        else:
            out.append(a)
    if "--seeds" not in argv:
        out += ["--seeds", *map(str, all_seeds)]
    return out


def _sensitivity(args: argparse.Namespace) -> int:
    from onebit.experiments.config import load_config
    from onebit.experiments.report import markdown_table
    from onebit.experiments.sensitivity import sensitivity
    from onebit.schedules import read_ranking

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={json.dumps(args.out)}")
    if args.data_root:
        overrides.append(f"data.root={json.dumps(args.data_root)}")
    cfg = load_config(args.config, overrides)
    _seeds(args.seeds)
    if args.workers < 1:
        raise OnebitError(f"--workers must be at least 1, got {args.workers}.")
    _check_outputs(args, cfg.out)
    try:
        paths = sensitivity(cfg, args.seeds, workers=args.workers)
    except KeyboardInterrupt:
        log.error("interrupted; run the same command again to continue where it stopped")
        return 130
    for path in paths:
        r = read_ranking(path)
        rows = [{"layer": n, "val acc %": f"{100 * a:.2f}"} for n, a in r.layers]
        print(f"{path}  ({r.epochs_per_layer} epochs per probe)")
        print(markdown_table(rows))
        print(f"ascending (least sensitive first): {', '.join(r.order(True))}\n")
    return 0


def _report(args: argparse.Namespace) -> int:
    from onebit.experiments.report import (
        find_runs,
        format_table,
        markdown_table,
        mixed_methods,
        read_run,
        table_columns,
        write_results,
    )
    from onebit.fileio import check_folder

    if args.readme:
        from onebit.experiments.records import README_COMMAND, update_readme

        if args.runs:
            raise OnebitError("--readme regenerates the README from --records; drop RUNS.")
        if args.out or args.no_plots:
            raise OnebitError("--out and --no-plots go with RUNS, not with --readme; drop them.")
        records = args.records or "records"
        differs = update_readme(args.readme, records, check=args.check)
        if args.check and differs:
            print(
                f"onebit: {args.readme} disagrees with {records}/; run: {README_COMMAND}",
                file=sys.stderr,
            )
            return 1
        print(f"{args.readme}: {'updated' if differs else 'up to date'}")
        return 0
    if args.check:
        raise OnebitError("--check goes with --readme FILE.")
    if args.records:
        raise OnebitError("--records goes with --readme FILE.")
    if not args.runs:
        raise OnebitError("give run folders or a comparison folder (or --readme FILE).")
    run_dirs = find_runs(args.runs)
    if args.out:
        out = check_folder(args.out, "--out")
    else:
        parents = {d.resolve().parent for d in run_dirs}
        if len(parents) > 1:
            raise OnebitError(
                "the runs live in different folders; say where the report goes with --out."
            )
        out = check_folder(run_dirs[0].parent, "the report folder")
    rows = [r for r in (read_run(d) for d in run_dirs) if r is not None]
    for name in mixed_methods(run_dirs):
        log.warning("the %s runs differ in more than their seed; their row mixes configs", name)
    for d in run_dirs:
        if read_run(d) is None:
            log.warning("%s has not finished; left out of the table", d)
    if not rows:
        raise OnebitError("none of the given runs has finished (no complete summary.json).")
    names = {r["name"] for r in rows}
    doc = write_results(out, rows, names.pop() if len(names) == 1 else out.name, run_dirs,
                        plots=not args.no_plots)  # fmt: skip
    print(markdown_table(format_table(doc["table"]), table_columns(doc["table"])))
    print(f"\nresults: {out / 'results.md'}")
    return 0


def _data(args: argparse.Namespace) -> int:
    from onebit import data

    if args.action == "where":
        print(data.find_root(args.name, args.root))
    else:
        print(data.download(args.name, args.root, progress=True))
    return 0


def _pack(args: argparse.Namespace) -> int:
    from onebit.experiments.report import human_bytes
    from onebit.experiments.runs import load_run
    from onebit.fileio import check_writable
    from onebit.runtime.format import is_onebit_file

    run_dir = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent
    target = check_writable(args.output or run_dir / "model.onebit")
    if target.exists() and not is_onebit_file(target):
        raise OnebitError(
            f"{target} exists and is not a .onebit model file; onebit pack replaces only its "
            "own model files, so give another -o."
        )
    if args.onnx:
        onnx_target = check_writable(args.onnx)
        if onnx_target.resolve() == target.resolve():
            raise OnebitError("--onnx and -o name the same file; give two files.")
    cfg, model, _method, state = load_run(args.run, "last" if args.last else "best")
    from onebit.packer import pack

    shape = tuple(state["input_shape"])
    if "mean" in state:
        mean, std = state["mean"], state["std"]
    else:  # checkpoints written before onebit stored the normalization
        from onebit.experiments.runs import load_data

        data = load_data(cfg)
        mean, std = data.mean, data.std
    source = {
        "config": cfg.to_dict(),
        "input_shape": list(shape),
        "num_classes": int(state["num_classes"]),
        "run": str(args.run),
        "epoch": int(state.get("epoch", -1)),
    }
    from onebit.experiments.runs import example_input

    example = (example_input(cfg, shape, int(state["num_classes"]))[:2],)
    packed = pack(model, example, mean=mean, std=std, source=source)
    pixels = state.get("pixels")
    if pixels is None and cfg.data.name in ("mnist", "fashion-mnist", "cifar10"):
        pixels = True  # checkpoints written before onebit stored it: these datasets are pixels
    if isinstance(pixels, bool):
        packed.input["pixels"] = pixels
    out = packed.save(target)
    float_bytes = sum(v.numel() * v.element_size() for v in state["model"].values())
    size = out.stat().st_size
    print(
        f"wrote {out}: {human_bytes(size)} (float state dict {human_bytes(float_bytes)}, "
        f"{float_bytes / size:.1f}x smaller)"
    )
    if args.onnx:
        from onebit.export import export_onnx

        atomic_write(args.onnx, lambda tmp: export_onnx(model, tmp, example))
        print(f"wrote {args.onnx}")
    return 0


def _training_file_rows(model: object, path: Path, rows: int) -> object | None:
    """The held-out test rows of ``path`` if it is the npz file (without x_test) the model was
    trained on: scoring all its rows would score the training rows too."""
    cfg = getattr(model, "source", {}).get("config", {})
    data = cfg.get("data", {}) if isinstance(cfg, dict) else {}
    trained_on = data.get("path") if isinstance(data, dict) and data.get("name") == "npz" else None
    if not isinstance(trained_on, str):
        return None
    try:
        same = Path(trained_on).expanduser().resolve() == path.resolve()
    except OSError:
        return None
    if not same:
        return None
    import numpy as np

    from onebit.data.npz import held_out_rows

    with np.load(path, allow_pickle=False) as z:
        y = z["y"] if "y" in z.files else None
    if y is None or len(y) != rows:
        return None
    return held_out_rows(y)


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from onebit.runtime import load
    from onebit.runtime.inputs import load_inputs

    if args.batch_size < 1:
        raise OnebitError(f"--batch-size must be at least 1, got {args.batch_size}.")
    model = load(args.model)
    got = load_inputs(args.inputs)
    x, y, parts = got.x, got.y, list(got.parts)
    if len(got.files) == 1 and got.files[0][1] == "x":
        p, _, rows = got.files[0]
        held = _training_file_rows(model, p, rows)
        if held is not None:
            if len(held) == 0:
                raise OnebitError(
                    f"{p} is the file the model was trained on and holds no test rows; give "
                    "other inputs."
                )
            x, y = x[held], None if y is None else y[held]
            parts = [
                f"the {len(held)} held-out test rows of {p.name}, the file the model trained on"
            ]
        else:
            parts = [f"all {rows} rows of x{'/y' if y is not None else ''} in {p.name}"]
    logits = model.predict_raw(x, args.batch_size)
    if not np.isfinite(logits).all():
        raise OnebitError(
            f"{args.model} computed NaN or infinite outputs; its weights are damaged or the "
            "inputs are far outside what it was trained on."
        )
    classes = logits.shape[-1]  # (N, classes), or (N, T, vocabulary) for a language model
    if y is not None and len(y) and int(y.max()) >= classes:
        raise OnebitError(
            f"the labels go up to {int(y.max())} but {args.model} predicts {classes} classes; "
            "give the labels of its task."
        )
    pred = logits.argmax(-1)  # a class per input, or per position of a sequence
    for i, p_ in enumerate(pred):
        cls = p_.tolist()  # an int, or a list of ints for a sequence
        if args.json:
            print(json.dumps({"index": i, "class": cls, "logits": logits[i].round(4).tolist()}))
        else:
            print(f"{i}\t{cls if pred.ndim == 1 else ' '.join(map(str, cls))}")
    scored = "; ".join(parts)
    if y is not None and np.asarray(y).size != pred.size:
        raise OnebitError(
            f"the labels hold {np.asarray(y).size} values but {args.model} predicts "
            f"{pred.size} ({' x '.join(map(str, pred.shape))}); give the labels of its task."
        )
    if y is not None:
        acc = float((pred == np.asarray(y).reshape(pred.shape)).mean())
        print(f"accuracy {acc:.4f} on {len(pred)} inputs ({scored})", file=sys.stderr)
    else:
        print(f"predicted {len(pred)} inputs ({scored}; no labels)", file=sys.stderr)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from onebit.experiments.bench import bench
    from onebit.experiments.report import markdown_table
    from onebit.fileio import check_writable
    from onebit.runtime import load

    for flag, values in (("--threads", args.threads), ("--batches", args.batches),
                         ("--repeats", [args.repeats])):  # fmt: skip
        if any(v < 1 for v in values):
            raise OnebitError(f"{flag} must be at least 1, got {values}.")
    if args.out:
        check_writable(args.out)
    res = bench(load(args.model), args.threads, args.batches, args.repeats)
    rows = []
    for r in res["results"]:
        row = {"threads": r["threads"], "batch": r["batch"], "packed ms": f"{r['packed_ms']:.3f}"}
        row |= {f"vs {k}": f"{v:.2f}x" for k, v in r["vs"].items()}
        if "vs_int8" in r:
            row |= {f"int8 vs {k}": f"{v:.2f}x" for k, v in r["vs_int8"].items()}
            agree = r["int8_agreement"]
            row["int8 argmax agree"] = f"{100 * agree['argmax']:.1f}%"
        rows.append(row)
    print(f"kernels: {res['isa']}\n")
    print(markdown_table(rows))
    layers = [
        {"op": r["op"], "kind": r["kind"], "us (batch 1)": f"{r['us']:.1f}"}
        for r in res["layers_batch1"]
    ]
    print("\nper op, batch 1, first thread count:\n" + markdown_table(layers))
    if args.out:
        from onebit.experiments.runs import environment

        doc = {**res, "model": args.model, "env": environment()}
        atomic_write(args.out, json.dumps(doc, indent=2) + "\n")
    return 0


def _leave_process_group(code: int) -> None:
    """Under torchrun, end the process at once after its error sentence: with a peer stopped
    or gone, gloo's threads would otherwise abort the interpreter's exit (a core dump, and an
    exit status that hides the sentence)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class _Parser(argparse.ArgumentParser):
    """argparse, whose usage errors are one ``onebit: error:`` sentence like every other."""

    def error(self, message: str) -> NoReturn:
        text = message.rstrip(".")
        self.exit(2, f"onebit: error: {text}; see {self.prog} --help.\n")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``onebit`` console script."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed as one sentence
        return e.code if isinstance(e.code, int) else 2
    # under torchrun only the main process reports progress; every process reports errors
    main_process = int(os.environ.get("RANK", "0")) == 0
    level = logging.DEBUG if args.verbose else logging.INFO if main_process else logging.WARNING
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        if args.command == "train":
            return _train(args, argv)
        if args.command == "compare":
            return _compare(args, argv)
        if args.command == "sensitivity":
            return _sensitivity(args)
        if args.command == "report":
            return _report(args)
        handlers = {"eval": _eval, "data": _data, "pack": _pack, "run": _run, "bench": _bench}
        return handlers[args.command](args)
    except OnebitError as e:
        print(f"onebit: error: {e}", file=sys.stderr)
        _leave_process_group(2)
        return 2
    except KeyboardInterrupt:
        print("onebit: error: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

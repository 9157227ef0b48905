"""The ``tinyvision`` command line.

tinyvision train [CONFIG] [section.key=value ...]   train (no CONFIG: the built-in defaults)
tinyvision train --resume RUN                       continue an interrupted run
tinyvision models                                   list the registered model variants
tinyvision summary MODEL-OR-CONFIG                  layers, shapes, parameters, MACs
tinyvision data DATASET                             find (or fetch) and verify a data set
tinyvision report RUN                               (re)write RUN/report.html and report.md
tinyvision compare RUN... | FOLDER [--html OUT]    a table of runs, their settings, results
tinyvision sweep CONFIG --space SPACE --trials N    hyperparameter search (Optuna)
tinyvision predict RUN IMAGE...                     classify image files with a run's model
tinyvision export RUN [--out FILE.onnx]             write the run's model as ONNX

Every command takes ``--import MODULE`` (or reads ``$TINYVISION_PLUGINS``): modules that
register users' own models with ``tinyvision.register_model`` before the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import get_args

from tinyvision.config import TTAMode
from tinyvision.errors import TinyVisionError, TrainingInterrupted
from tinyvision.version import __version__

EXAMPLES = """\
examples:
  tinyvision train configs/fmnist-mixer-quick.toml  the quick recipe (make train)
  tinyvision train configs/fmnist-densenet.toml     a recipe from a config file
  tinyvision train configs/fmnist-mixer.toml optim.lr=3e-3 train.epochs=5
  tinyvision train --resume runs/fashion-mnist-mixer-20261122-101500
  tinyvision summary densenet_brief                 the brief's shape questions, answered
  tinyvision data fashion-mnist --data-dir ~/data   check where the data comes from
  tinyvision report runs/fashion-mnist-mixer-20261122-101500
  tinyvision evaluate runs/fashion-mnist-mixer-20261122-101500 --tta flip
  tinyvision compare runs/ --sort time --html compare.html
  tinyvision sweep configs/fmnist-mixer.toml train.epochs=20 \\
      --space configs/sweep-fmnist-mixer.toml --trials 40   search on a validation split
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyvision",
        description="Train precisely specified image classifiers on Fashion-MNIST and CIFAR-10.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tinyvision {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train a model and write a run folder",
        description="Train a model. Settings come from the config file (or the defaults), then "
        "from section.key=value overrides, then from the flags below.",
    )
    train.add_argument("config", nargs="?", help="a TOML config file (see configs/)")
    train.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="override any config value, e.g. optim.lr=3e-3 model.depth=4",
    )
    train.add_argument(
        "--resume",
        metavar="RUN",
        help="continue the run in folder RUN with its saved config (a finished run is left "
        "as it is; one stopped before its first checkpoint starts again in its folder)",
    )
    train.add_argument(
        "--epochs",
        type=int,
        help="= train.epochs. With --resume: extend the run to this many epochs in all (not "
        "fewer than it has done); the learning-rate schedule is rebuilt for the new total, "
        "the steps done kept",
    )
    train.add_argument("--seed", type=int, help="= train.seed")
    train.add_argument("--device", help="= train.device: auto, cpu, cuda, cuda:N, mps")
    train.add_argument("--data-dir", help="= data.data_dir: look here for the data set first")
    train.add_argument(
        "--no-verify",
        action="store_true",
        help="= data.verify=false: trust local data files that fail the checksum",
    )
    train.add_argument("--no-download", action="store_true", help="= data.download=false")
    train.add_argument("--out", help="= train.out_dir: where run folders are created")
    train.add_argument(
        "--tensorboard",
        action="store_true",
        help="= train.tensorboard=true: also write TensorBoard event files into the run folder "
        "(pip install 'tinyvision[tensorboard]')",
    )

    commands.add_parser(
        "models",
        help="list the registered model variants",
        description="List every model variant a config's model.name can take: its name, its "
        "family and what it is.",
    )

    summary = commands.add_parser("summary", help="per-layer shapes, parameters and MACs")
    summary.add_argument("model", help="a model variant name or a TOML config file")
    summary.add_argument("overrides", nargs="*", metavar="section.key=value")
    summary.add_argument(
        "--dataset",
        choices=["fashion-mnist", "cifar10"],
        help="input shape to assume (default: the config's, else fashion-mnist)",
    )

    data = commands.add_parser(
        "data",
        help="find or download a data set and verify it",
        description="Find DATASET where training would (--data-dir if given, else "
        "TINYVISION_DATA, the user cache, system folders, then a download), check it against "
        "the official checksums and say where it came from.",
    )
    data.add_argument("dataset", choices=["fashion-mnist", "cifar10"])
    data.add_argument("--data-dir", help="use the data set in this folder, or fail")
    data.add_argument(
        "--no-verify", action="store_true", help="trust local files that fail the checksum"
    )
    data.add_argument("--no-download", action="store_true", help="never download")

    report = commands.add_parser(
        "report",
        help="write a run's report.html and report.md",
        description="Evaluate the run's model.pt on the test split and write report.html "
        "(self-contained), report.md, the confusion matrix, misclassified images and "
        "per_class.json into the run folder.",
    )
    report.add_argument("run", help="a run folder")
    report.add_argument(
        "--device", help="evaluate here (default: the run's device if present, else the CPU)"
    )

    evaluate = commands.add_parser(
        "evaluate",
        help="test accuracy of a run's model, plain and with test-time augmentation",
        description="Evaluate the run's model.pt on the test split, plainly and with test-time "
        "augmentation (the softmax averaged over the image and its mirror image, and with "
        "flip-shift also one-pixel translations of both), and write evaluation.json into the "
        "run folder. Test-time augmentation is reported beside the plain accuracy, never "
        "instead of it.",
    )
    evaluate.add_argument("run", help="a run folder")
    evaluate.add_argument(
        "--tta",
        choices=[mode for mode in get_args(TTAMode) if mode != "none"],
        default="flip",
        help="default: flip",
    )
    evaluate.add_argument(
        "--device", help="evaluate here (default: the run's device if present, else the CPU)"
    )

    compare = commands.add_parser(
        "compare",
        help="compare runs: settings that differ and results, as a table",
        description="One row per run: name, then the results (final test accuracy, best "
        "validation accuracy, final train accuracy, epochs, time), then the model and the "
        "hyperparameters that differ between the runs. The table fits the terminal (COLUMNS): "
        "columns that do not fit follow in further blocks.",
    )
    compare.add_argument(
        "runs", nargs="+", metavar="RUN", help="run folders, or folders holding run folders"
    )
    compare.add_argument(
        "--sort",
        default="test_acc",
        metavar="KEY",
        help="a column (run, model, epochs, train_acc, test_acc, best_val_acc, "
        "time) or a config key like optim.lr; accuracies sort best first",
    )
    compare.add_argument("--reverse", action="store_true", help="flip the sort order")
    compare.add_argument(
        "--html",
        metavar="OUT.html",
        help="also write a sortable page with every run's curves overlaid",
    )

    sweep = commands.add_parser(
        "sweep",
        help="search hyperparameters with Optuna, scored on a validation split",
        description="Run an Optuna study over the config space in SPACE (see docs/sweeps.md). "
        "Trials are scored on training images held out as a validation split, never on the "
        "test split. Overrides go right after CONFIG and hold for every trial.",
    )
    sweep.add_argument("config", nargs="?", help="the TOML config every trial starts from")
    sweep.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="fixed for every trial, e.g. train.epochs=20",
    )
    sweep.add_argument("--space", required=True, help="TOML file of distributions per config key")
    sweep.add_argument(
        "--trials",
        type=int,
        required=True,
        help="trials this worker runs (0: only rewrite the table, best.toml, plots)",
    )
    sweep.add_argument(
        "--storage",
        metavar="URL",
        help="SQLAlchemy URL of the study (default: sqlite:///OUT/study.db); "
        "workers on several machines share e.g. postgresql+psycopg2://u:p@host/db",
    )
    sweep.add_argument("--study-name", help="default: the space file's name")
    sweep.add_argument("--out", help="the sweep folder (default: train.out_dir/sweeps/STUDY)")
    sweep.add_argument(
        "--seed", type=int, help="seed of the sampler (one worker; leave unset with several)"
    )
    sweep.add_argument(
        "--val-size",
        type=int,
        help="training images held out for scoring (default: data.val_size, "
        "else 10%% of the training set)",
    )

    predict = commands.add_parser(
        "predict",
        help="classify image files with a trained run's model",
        description="Classify image files of any size and mode. Each is turned to grey (for a "
        "Fashion-MNIST model) or RGB, fitted to the model's image size and normalised as in "
        "training; see `tinyvision.predict` for every step. Fashion-MNIST shows light garments "
        "on black: photos of clothes on a white background need --invert.",
    )
    predict.add_argument("run", help="a run folder (its model.pt is used)")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    predict.add_argument(
        "--top-k",
        type=int,
        default=1,
        metavar="K",
        help="show the K most probable classes (default 1)",
    )
    predict.add_argument(
        "--invert",
        action="store_true",
        help="invert the images first (dark objects on a light background)",
    )
    predict.add_argument(
        "--fit",
        choices=["pad", "crop", "stretch"],
        default="pad",
        help="pad (default: keep proportions, pad with black), crop the centre, "
        "or stretch to the model's size",
    )
    predict.add_argument("--json", action="store_true", help="print JSON instead of text")

    export = commands.add_parser(
        "export",
        help="write a trained run's model as ONNX",
        description="Write RUN/model.pt as ONNX (input `images` normalised as in training, "
        "output `logits`, dynamic batch size), then check onnxruntime's logits against "
        "PyTorch's. Needs the `export` extra: pip install 'tinyvision[export]'.",
    )
    export.add_argument("run", help="a run folder")
    export.add_argument("--out", metavar="FILE.onnx", help="default: RUN/model.onnx")
    export.add_argument(
        "--no-check",
        action="store_true",
        help="do not compare onnxruntime with PyTorch after writing",
    )
    add_import_option(parser, commands)
    return parser


def add_import_option(
    parser: argparse.ArgumentParser, commands: argparse._SubParsersAction
) -> None:
    """``--import MODULE`` on every command (before or after its name): modules or .py files
    that register users' own models (``tinyvision.register_model``) before the command runs."""
    help_text = (
        "import this module (or .py file) first, to register your own models; repeatable; "
        "also $TINYVISION_PLUGINS (comma-separated)"
    )
    parser.add_argument(
        "--import", dest="imports_first", action="append", metavar="MODULE", help=help_text
    )
    for command in commands.choices.values():
        command.add_argument(
            "--import", dest="imports", action="append", metavar="MODULE", help=help_text
        )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may also follow the flags: `train CONFIG --epochs 3 optim.lr=1e-3`.
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    if len(overrides) != len(extra) or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    try:
        imports = [*(args.imports_first or []), *(getattr(args, "imports", None) or [])]
        if imports:
            from tinyvision.models import import_plugins

            import_plugins(imports)
        return COMMANDS[args.command](args)
    except TinyVisionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 130 if isinstance(err, TrainingInterrupted) else 2
    except KeyboardInterrupt:
        # Ctrl-C outside the training loop (reading data, building or compiling the model) or a
        # second Ctrl-C inside it: no traceback, the shell's usual exit status for SIGINT.
        print(
            "\ninterrupted (Ctrl-C); a run keeps its last saved checkpoint "
            "(continue it with `tinyvision train --resume RUN`)",
            file=sys.stderr,
        )
        return 130


def cmd_train(args: argparse.Namespace) -> int:
    from tinyvision.config import load_config, toml_value
    from tinyvision.engine import train
    from tinyvision.report import report_when_asked
    from tinyvision.resume import plural

    if args.resume:
        others = {
            "--seed": args.seed,
            "--device": args.device,
            "--data-dir": args.data_dir,
            "--out": args.out,
            "--no-verify": args.no_verify or None,
            "--no-download": args.no_download or None,
        }
        given = [flag for flag, value in others.items() if value is not None]
        if args.config or args.overrides or given:
            raise TinyVisionError(
                "--resume continues a run with its saved config; give no config file, "
                f"overrides or {', '.join(given) or 'flags'} with it (only --epochs, to extend it)"
            )
        report_when_asked(train(resume=args.resume, epochs=args.epochs))
        return 0
    overrides = list(args.overrides)
    config_path = args.config
    if config_path is not None and "=" in config_path and not Path(config_path).exists():
        overrides.insert(0, config_path)  # `tinyvision train optim.lr=0.01`: no file given
        config_path = None
    flags = {
        "train.epochs": args.epochs,
        "train.seed": args.seed,
        "train.device": args.device,
        "train.out_dir": args.out,
        "data.data_dir": args.data_dir,
    }
    overrides += [f"{key}={toml_value(value)}" for key, value in flags.items() if value is not None]
    if args.no_verify:
        overrides.append("data.verify=false")
    if args.no_download:
        overrides.append("data.download=false")
    if args.tensorboard:
        overrides.append("train.tensorboard=true")
    config = load_config(config_path, overrides)
    why = defaults_note(config_path, overrides)
    if why:  # say what is about to run for a while, and why
        print(
            f"{why}: training {config.model_name} on {config.data.dataset} for "
            f"{plural(config.train.epochs, 'epoch')} (see configs/ for the recipes)"
        )
    report_when_asked(train(config))
    return 0


def defaults_note(config_path: str | None, overrides: list[str]) -> str:
    """Why the defaults are being trained, or "" when a config file sets something."""
    from tinyvision.config import tomllib

    with_overrides = " with your overrides" if overrides else ""
    if config_path is None:
        return f"no config file given, so the built-in defaults{with_overrides}"
    if not tomllib.loads(Path(config_path).read_text()):  # valid: load_config read it
        return f"{config_path} sets nothing, so the built-in defaults{with_overrides}"
    return ""


def cmd_models(args: argparse.Namespace) -> int:
    from tinyvision.models import list_variants

    for variant in list_variants():
        print(f"{variant.name:<18} {variant.family.__name__:<14} {variant.description}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from tinyvision.summary import summary_text

    print(summary_text(args.model, args.dataset, args.overrides))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from tinyvision.data import load_dataset

    dataset = load_dataset(
        args.dataset,
        args.data_dir,
        download=not args.no_download,
        verify=not args.no_verify,
        progress=sys.stderr.isatty(),
    )  # no download bar in CI logs
    print(
        f"{dataset.name}: {len(dataset.train_labels)} training and {len(dataset.test_labels)} "
        f"test images of {dataset.in_chans}x{dataset.image_size[0]}x{dataset.image_size[1]}"
    )
    for key, value in dataset.source.items():
        print(f"  {key}: {value}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from tinyvision.report import write_report

    path = write_report(args.run, device=args.device)
    print(f"report: {path}\n        {path.with_suffix('.md')}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tinyvision.evaluate import evaluate_run

    result = evaluate_run(args.run, tta=args.tta, device=args.device)
    print(f"test accuracy: {100 * result['test_acc']:.2f}% (plain)")
    tta_acc = 100 * result["test_acc_tta"]
    print(f"test accuracy: {tta_acc:.2f}% (test-time augmentation: {args.tta})")
    for note in result["notes"]:
        print(f"note: {note}")
    if result["save_error"] is not None:  # the results above stand; only the file is missing
        print(f"error: the results were not saved: {result['save_error']}", file=sys.stderr)
        return 2
    print(f"written: {result['path']}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from tinyvision.compare import ComparisonTable, find_runs, write_comparison_html

    table = ComparisonTable.build(find_runs(args.runs), sort=args.sort, reverse=args.reverse)
    print(table.to_text())
    if args.html:
        print(f"\ncomparison page: {write_comparison_html(table, args.html)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from tinyvision.sweep import run_sweep

    overrides = list(args.overrides)
    config_path = args.config
    if config_path is not None and "=" in config_path and not Path(config_path).exists():
        overrides.insert(0, config_path)  # `tinyvision sweep optim.lr=0.01 ...`: no file given
        config_path = None
    run_sweep(
        config_path,
        args.space,
        args.trials,
        overrides=overrides,
        storage=args.storage,
        study_name=args.study_name,
        out_dir=args.out,
        seed=args.seed,
        val_size=args.val_size,
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from tinyvision.predict import format_predictions, predict_files

    unreadable: list[str] = []
    predictions = predict_files(
        args.run,
        args.images,
        top_k=args.top_k,
        invert=args.invert,
        fit=args.fit,
        unreadable=unreadable,
    )
    if predictions:  # the good files first, then each bad one
        print(format_predictions(predictions, as_json=args.json), flush=True)
    for problem in unreadable:
        print(f"error: {problem}", file=sys.stderr)
    return 2 if unreadable else 0


def cmd_export(args: argparse.Namespace) -> int:
    from tinyvision.export import ATOL, export_onnx

    result = export_onnx(args.run, args.out, check=not args.no_check)
    print(f"ONNX model: {result.path}")
    if result.max_abs_diff is not None:
        print(
            f"checked with onnxruntime: logits within {result.max_abs_diff:.2g} of PyTorch's "
            f"(tolerance {ATOL:g})"
        )
    return 0


COMMANDS = {
    "train": cmd_train,
    "models": cmd_models,
    "summary": cmd_summary,
    "data": cmd_data,
    "sweep": cmd_sweep,
    "report": cmd_report,
    "evaluate": cmd_evaluate,
    "compare": cmd_compare,
    "predict": cmd_predict,
    "export": cmd_export,
}

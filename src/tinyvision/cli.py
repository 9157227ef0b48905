"""The ``tinyvision`` command line.

    tinyvision train [CONFIG] [section.key=value ...]   train (defaults: the quick Mixer recipe)
    tinyvision train --resume RUN                       continue an interrupted run
    tinyvision models                                   list the registered model variants
    tinyvision summary MODEL-OR-CONFIG                  layers, shapes, parameters, MACs
    tinyvision data DATASET                             find (or fetch) and verify a data set
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinyvision.errors import TinyVisionError, TrainingInterrupted

EXAMPLES = """\
examples:
  tinyvision train                                  quick Mixer recipe on Fashion-MNIST
  tinyvision train configs/fmnist-densenet.toml     a recipe from a config file
  tinyvision train configs/fmnist-mixer.toml optim.lr=3e-3 train.epochs=5
  tinyvision train --resume runs/fashion-mnist-mixer-20261122-101500
  tinyvision summary densenet_brief                 the brief's shape questions, answered
  tinyvision data fashion-mnist --data-dir ~/data   check where the data comes from
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyvision",
        description="Train precisely specified image classifiers on Fashion-MNIST and CIFAR-10.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train a model and write a run folder",
        description="Train a model. Settings come from the config file (or the defaults), then "
        "from section.key=value overrides, then from the flags below.",
    )
    train.add_argument("config", nargs="?", help="a TOML config file (see configs/)")
    train.add_argument("overrides", nargs="*", metavar="section.key=value",
                       help="override any config value, e.g. optim.lr=3e-3 model.depth=4")
    train.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN")
    train.add_argument("--epochs", type=int, help="= train.epochs")
    train.add_argument("--seed", type=int, help="= train.seed")
    train.add_argument("--device", help="= train.device: auto, cpu, cuda, cuda:N, mps")
    train.add_argument("--data-dir", help="= data.data_dir: look here for the data set first")
    train.add_argument("--no-verify", action="store_true",
                       help="= data.verify=false: trust local data files that fail the checksum")
    train.add_argument("--no-download", action="store_true", help="= data.download=false")
    train.add_argument("--out", help="= train.out_dir: where run folders are created")

    commands.add_parser("models", help="list the registered model variants")

    summary = commands.add_parser("summary", help="per-layer shapes, parameters and MACs")
    summary.add_argument("model", help="a model variant name or a TOML config file")
    summary.add_argument("overrides", nargs="*", metavar="section.key=value")
    summary.add_argument("--dataset", choices=["fashion-mnist", "cifar10"],
                         help="input shape to assume (default: the config's, else fashion-mnist)")

    data = commands.add_parser("data", help="find or download a data set and verify it")
    data.add_argument("dataset", choices=["fashion-mnist", "cifar10"])
    data.add_argument("--data-dir")
    data.add_argument("--no-verify", action="store_true")
    data.add_argument("--no-download", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except TinyVisionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 130 if isinstance(err, TrainingInterrupted) else 2


def cmd_train(args: argparse.Namespace) -> int:
    from tinyvision.config import load_config
    from tinyvision.engine import train

    if args.resume:
        if args.config or args.overrides:
            raise TinyVisionError("--resume continues a run with its saved config; "
                                  "give no config file or overrides with it")
        train(resume=args.resume)
        return 0
    overrides = list(args.overrides)
    config_path = args.config
    if config_path is not None and "=" in config_path and not Path(config_path).exists():
        overrides.insert(0, config_path)  # `tinyvision train optim.lr=0.01`: no file given
        config_path = None
    flags = {
        "train.epochs": args.epochs, "train.seed": args.seed, "train.device": args.device,
        "train.out_dir": args.out, "data.data_dir": args.data_dir,
    }
    overrides += [f"{key}={_toml_value(value)}" for key, value in flags.items() if value is not None]
    if args.no_verify:
        overrides.append("data.verify=false")
    if args.no_download:
        overrides.append("data.download=false")
    train(load_config(config_path, overrides))
    return 0


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

    dataset = load_dataset(args.dataset, args.data_dir, download=not args.no_download,
                           verify=not args.no_verify)
    print(f"{dataset.name}: {len(dataset.train_labels)} training and {len(dataset.test_labels)} "
          f"test images of {dataset.in_chans}x{dataset.image_size[0]}x{dataset.image_size[1]}")
    for key, value in dataset.source.items():
        print(f"  {key}: {value}")
    return 0


def _toml_value(value: object) -> str:
    return str(value) if isinstance(value, int) else f'"{value}"'


COMMANDS = {"train": cmd_train, "models": cmd_models, "summary": cmd_summary, "data": cmd_data}

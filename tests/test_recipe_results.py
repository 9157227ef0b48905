"""benchmarks/recipe_results.py: runs that differ only in their seed become one results row."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from tinyvision.engine import train

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "recipe_results.py"


def test_seeds_of_one_recipe_are_averaged_and_other_recipes_get_their_own_row(
    tiny_config, tmp_path
):
    results = [train(tiny_config("train.report=false", f"train.seed={seed}")) for seed in (0, 1, 2)]
    other = train(tiny_config("train.report=false", "optim.lr=1e-3"))
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "runs"), "--curves", str(tmp_path / "c.png")],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    rows = [line for line in out.splitlines() if line.startswith("| mixer")]
    assert len(rows) == 2
    (three,) = [row for row in rows if "(n = 3:" in row]
    accs = [r.summary["final_test_acc"] for r in results]
    mean = sum(accs) / 3
    std = (sum((a - mean) ** 2 for a in accs) / 2) ** 0.5
    assert f"**{100 * mean:.2f}% +- {100 * std:.2f}%**" in three
    assert three.rstrip(" |").endswith("0, 1, 2")
    (one,) = [row for row in rows if "(one seed" in row]
    assert f"**{100 * other.summary['final_test_acc']:.2f}%** (one seed" in one
    assert "+-" not in one
    assert (tmp_path / "c.png").stat().st_size > 0


def test_unfinished_runs_alone_are_an_error(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("[train]\nseed = 0\n")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "none of these runs has finished" in result.stderr


def test_the_command_of_a_row_has_placeholders_for_the_seed_and_the_seeded_run_name():
    spec = importlib.util.spec_from_file_location("recipe_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    env = {
        "command": "/x/.venv/bin/tinyvision train configs/fmnist-resmlp.toml --seed 2 "
        "--out runs/r 'train.name=\"fmnist-resmlp-seed2\"' train.threads=1"
    }
    assert module.command_template(env) == (
        "tinyvision train configs/fmnist-resmlp.toml --seed SEED --out runs/r "
        "'train.name=\"fmnist-resmlp-seedSEED\"' train.threads=1"
    )


def test_a_recipe_label_keeps_the_overrides_that_change_what_is_trained(tmp_path):
    spec = importlib.util.spec_from_file_location("recipe_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    command = (
        "tinyvision train configs/cifar10-dynconv-cpu.toml --seed 1 --out runs "
        "'train.name=\"x-seed1\"' data.data_dir=/d data.verify=false train.threads=2 "
        "model.num_kernels=1 train.epochs=9"
    )
    environment = {"command": command, "torch_threads": 2}
    (tmp_path / "environment.json").write_text(json.dumps(environment))
    run = module.RunRecord(name="x", path=tmp_path, config={}, metrics=[], summary={})
    # The static twin and a shortened run stay apart from the recipe; bookkeeping does not show.
    assert module.recipe_label([run]) == "cifar10-dynconv-cpu model.num_kernels=1 train.epochs=9"
    assert module.threads_label([[run]]) == "2 CPU threads"


def test_a_run_evaluated_every_second_epoch_with_views_gets_its_views_column_and_curves(
    tiny_config, tmp_path
):
    result = train(
        tiny_config(
            "train.report=false", "train.epochs=3", "train.eval_every=2", "train.eval_tta=flip"
        )
    )
    first = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert "test_acc" not in first  # epoch 1 was not evaluated
    out = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            str(tmp_path / "runs"),
            "--curves",
            str(tmp_path / "c.png"),
            "--minutes",
            str(tmp_path / "m.png"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    (row,) = [line for line in out.splitlines() if line.startswith("| mixer")]
    assert f"flip: {100 * result.summary['final_test_acc_tta']:.2f}% (n = 1)" in row
    assert (tmp_path / "c.png").stat().st_size > 0
    assert (tmp_path / "m.png").stat().st_size > 0


def test_two_recipes_trained_by_one_command_are_labelled_by_the_settings_that_differ(tmp_path):
    spec = importlib.util.spec_from_file_location("recipe_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    command = "tinyvision train configs/cifar10-dynconv-cpu.toml --seed 0 train.threads=2"
    (tmp_path / "environment.json").write_text(json.dumps({"command": command}))

    def run(depths: list[int], epochs: int) -> object:
        config = {"model.depths": depths, "train.epochs": epochs, "optim.lr": 0.1}
        return module.RunRecord(name="x", path=tmp_path, config=config, metrics=[], summary={})

    groups = [[run([5, 1], 24)], [run([2, 1], 34)]]
    labels = module.distinct_labels(groups)
    assert labels == [
        "cifar10-dynconv-cpu (model.depths=[5, 1], train.epochs=24)",
        "cifar10-dynconv-cpu (model.depths=[2, 1], train.epochs=34)",
    ]
    assert module.distinct_labels(groups[:1]) == ["cifar10-dynconv-cpu"]

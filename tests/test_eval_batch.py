"""benchmarks/eval_batch.py: one row per evaluation batch size, the config's own included."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_every_batch_size_and_the_configs_own_get_a_row_relative_to_the_configs(tmp_path):
    out = tmp_path / "eval.md"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "eval_batch.py"),
            str(ROOT / "configs" / "cifar10-dynconv-cpu.toml"),
            "--images",
            "16",
            "--repeats",
            "1",
            "--batches",
            "8,16",
            "--out",
            str(out),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    rows = [line for line in out.read_text().splitlines() if line.startswith("| cifar10")]
    batches = [row.split(" | ")[2] for row in rows]
    assert batches == ["256 (the config's)", "16", "8"]  # largest first
    assert "bf16 autocast, channels-first" in rows[0]  # the recipe's precision and layout
    assert rows[0].rstrip(" |").endswith("1.00x")

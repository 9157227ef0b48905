"""tinyvision: precisely specified image classifiers, trained fast, with a report.

The Python API (see ``tinyvision.api`` and the README's "From Python")::

    import tinyvision

    run = tinyvision.train("configs/fmnist-resmlp-brief.toml", {"train.epochs": 3})
    run.metrics, run.summary, run.model, run.report()
    tinyvision.load_run(run.path)                      # the same, for an existing run folder
    tinyvision.register_model("my_net", MyNet)          # a model of your own, by name
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["Run", "Table", "compare_runs", "load_run", "register_model", "train"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: `import tinyvision` stays light (no torch), and the modules that
    # import the package for its version (the report) do not import the whole API with it.
    if name in __all__:
        from tinyvision import api

        return getattr(api, name)
    raise AttributeError(f"module 'tinyvision' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

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

from tinyvision.version import __version__ as __version__  # re-exported: tinyvision.__version__

__all__ = ["Run", "Table", "compare_runs", "load_run", "register_model", "train"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: `import tinyvision` stays light (no torch). The package's own
    # modules never import it (the version is tinyvision.version): the API sits above them all.
    if name in __all__:
        from tinyvision import api

        return getattr(api, name)
    raise AttributeError(f"module 'tinyvision' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

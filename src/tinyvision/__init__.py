"""tinyvision: precisely specified image classifiers, trained fast, with a report."""

__version__ = "0.1.0"

"""The package's version, in a module of its own.

What records the version (the reports, the comparison page, ``--version``) imports it from here
rather than from the package: the package's ``__init__`` loads the Python API (the top of the
import graph) on first use, so importing the package from below would close a cycle.
"""

__version__ = "0.1.0"

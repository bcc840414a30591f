"""Build helper for `pip install .` (metadata and console scripts are in pyproject.toml).

The package is the flat set of top-level modules (DESIGN §1: no packages-in-folders), so the
module list is computed here rather than kept by hand: every top-level *.py except the tests and
this file.  A new kv_*.py module is installed without anyone editing a list.
"""

import os

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def runtime_modules() -> list[str]:
    return sorted(name[:-3] for name in os.listdir(HERE)
                  if name.endswith(".py") and not name.startswith(("test_", "conftest", "setup")))


if __name__ == "__main__":
    setup(py_modules=runtime_modules(), packages=[])

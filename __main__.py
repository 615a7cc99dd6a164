"""``python -m nmsat``: the command line (:mod:`nmsat.sw.cli`), for when the ``nmsat`` script is not on PATH."""

import sys

from .sw.cli import main

sys.exit(main())

"""The core in Amaranth: registers and run control, fetch, dispatcher, LOAD / GEMM / STORE units, joined in ``top``.

One module per unit, each a ``wiring.Component``; :class:`Core` (``top``)
joins them with their instruction queues, token counters and buffers.
"""

from .common import PC_BITS
from .top import Core

__all__ = ["Core", "PC_BITS"]

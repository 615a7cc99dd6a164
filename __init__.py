"""nmsat: an open training accelerator for N:M sparse neural networks.

Subpackages: ``hw`` (Amaranth RTL and the one configuration object),
``dataflow`` (the compiler), ``sim`` (the cycle-exact simulator), ``sw``
(PyTorch BDWP training, backend, driver, CLI) and ``fpga`` (VCU1525 flow).
"""

__version__ = "0.1.0"

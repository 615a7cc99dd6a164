"""PyTorch side and host tools: BDWP N:M sparse training (``bdwp``), the MAC cost counter (``cost``),
the digits demo (``digits``), the Verilator + cocotb runner of the core (``rtl``, ``cocotb_device``)
and the ``nmsat`` command line (``cli``).  The hardware backend and the driver come in later issues."""

"""VCU1525 build flow: constraints, Vivado projects through edalize, Yosys estimates."""

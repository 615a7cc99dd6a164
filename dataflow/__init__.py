"""The compiler: tiling, mapping and scheduling of layers into accelerator programs."""

"""PyTorch side: BDWP N:M sparse training, the cost counter, the CLI."""

"""Tasks with real pretrained models and data that ship inside PyPI packages (no hub downloads)."""

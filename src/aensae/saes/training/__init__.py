"""The training engine: the trainer, stacked groups, the static step and its CUDA graphs,
data-parallel training. Architecture files never import it."""

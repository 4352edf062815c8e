"""Experiment grids, results tables, figures and performance benchmarks (command modules)."""

"""Benchmarks of what visual-token pruning buys: `python -m llava.bench.efficiency` (see its docstring)."""

"""Load generator and baselines for the chat service: `python -m bench <scenario>` (README, "Benchmarks")."""

"""Load generator and baselines for the chat service: `python -m bench <scenario> [options]` (see docs/bench.md)."""

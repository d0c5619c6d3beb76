"""Benchmarks that print figures (not timed tests): `python -m bench ttfa|interrupt|capacity|idle|peer|all`."""

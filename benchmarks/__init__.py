"""Benchmarks of symgrad against SymPy, JAX, SymEngine and CasADi (issue 3, item 6).

Run ``python -m benchmarks.run`` (or ``python benchmarks/run.py``); ``--help`` lists the options.
Never part of the test suite.
"""

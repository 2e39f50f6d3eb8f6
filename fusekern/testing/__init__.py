"""Test support shipped with the package, never imported by the library itself.

Plain PyTorch/Python references that tests and benchmarks compare the fast paths against, and
switches that force a backend or kernel configuration. A user may import them to check their own
setup; nothing under ``fusekern.ops``, ``fusekern.align`` or the pipeline depends on them.
"""

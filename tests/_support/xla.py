"""The XLA flags the JAX suite compiles with (set in conftest.py, inherited by subprocesses)."""

FAST_COMPILE = ("--xla_llvm_disable_expensive_passes=true", "--xla_backend_optimization_level=0")


def without_fast_compile(xla_flags):
    """`xla_flags` less the suite's fast-compile flags: XLA's defaults, for timed runs."""
    names = tuple(flag.split("=")[0] for flag in FAST_COMPILE)
    return " ".join(flag for flag in xla_flags.split() if not flag.startswith(names))

"""The XLA flags the JAX suite compiles with (set in conftest.py, inherited by subprocesses)."""

FAST_COMPILE = ("--xla_llvm_disable_expensive_passes=true", "--xla_backend_optimization_level=0")
_NAMES = tuple(flag.split("=")[0] for flag in FAST_COMPILE)


def with_fast_compile(xla_flags):
    """`xla_flags` plus those of the suite's fast-compile flags it does not set itself."""
    missing = [
        flag for flag, name in zip(FAST_COMPILE, _NAMES, strict=True) if name not in xla_flags
    ]
    return " ".join([xla_flags, *missing]).strip()


def without_fast_compile(xla_flags):
    """`xla_flags` less the suite's fast-compile flags: XLA's defaults, for timed runs."""
    return " ".join(flag for flag in xla_flags.split() if not flag.startswith(_NAMES))

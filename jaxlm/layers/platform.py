"""The platform a computation is traced for, which picks its attention and matmul paths.

It is JAX's default backend, unless the computation is traced for other devices: the ahead-of-
time compilation of a TPU slice's train step on a CPU-only host traces it inside
`tracing_for("tpu")`, so that it gets the TPU's kernels rather than the host's. The setting is a
JAX user context, part of every jit cache key: a function traced for one platform is traced
again for another.
"""

from __future__ import annotations

import jax

_TARGET = jax.make_user_context(default_value=None)


def target_platform() -> str:
    """'cpu', 'gpu' or 'tpu': what the computation being traced will run on."""
    return _TARGET.value or jax.default_backend()


def tracing_for(platform: str):
    """A context in which computations are traced to run on `platform` ('cuda' and 'rocm' count
    as 'gpu')."""
    return _TARGET("gpu" if platform in ("cuda", "rocm") else platform)

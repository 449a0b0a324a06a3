"""Forward and gradient time of each conv form of ``models.layers.Conv``: XLA's convolution, the CPU
forms without native kernels (1x1 as a matrix product, depthwise as shifted slices, the rest XLA's)
and oneDNN's convolutions (``deim_jax.kernels.onednn``, where they build), on shapes of D-FINE N and L.

    python benchmarks/conv_forms.py [--runs=10]

Batch 2, float32; the gradient is of sum(sin(conv(x))) with respect to the input and the kernel.
One table per run is appended to ``benchmarks/results/conv_forms_<platform>.md`` with date and device.
"""

from __future__ import annotations

import os
import statistics
import time

import bench_common  # first: puts the repository on sys.path (run as python benchmarks/...)
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from deim_jax.kernels import onednn
from deim_jax.models import layers

_RUNS = flags.DEFINE_integer("runs", 10, "Timed runs per measurement.")

# (where, H=W, in channels, out channels, kernel, stride, groups)
SHAPES = [
    ("N stage 2 light block 5x5 dw", 40, 64, 64, 5, 1, 64),
    ("L stage 2 light block 5x5 dw", 40, 192, 192, 5, 1, 192),
    ("L stage 2 downsample 3x3 s2 dw", 80, 512, 512, 3, 2, 512),
    ("L stage 1 aggregation 1x1", 80, 704, 256, 1, 1, 1),
    ("L stage 3 aggregation 1x1", 20, 3328, 1024, 1, 1, 1),
    ("L encoder 1x1", 80, 256, 128, 1, 1, 1),
    ("L stem 2x2, 32 -> 16", 321, 32, 16, 2, 1, 1),
    ("L stem 3x3 s2", 320, 64, 32, 3, 2, 1),
    ("L stage 1 3x3", 160, 48, 48, 3, 1, 1),
    ("L stage 3 3x3", 40, 128, 128, 3, 1, 1),
]
FORMS = (("xla", False, False), ("cpu forms", True, False), ("onednn", True, True))


def _median(fn, *args) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(_RUNS.value):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def time_forms(h, cin, cout, k, stride, groups):
    """{form: (forward ms, gradient ms)} for one shape."""
    module = layers.conv(cout, k, stride, groups)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, h, h, cin)), jnp.float32)
    variables = module.init(jax.random.PRNGKey(0), x)
    out = {}
    for name, on, native in FORMS:
        if native and not onednn.available():
            continue
        layers.CPU_FORMS, layers.NATIVE_KERNELS = on, native
        fwd = jax.jit(module.apply)
        grad = jax.jit(jax.grad(lambda v, x: jnp.sum(jnp.sin(module.apply(v, x))), (0, 1)))
        out[name] = (_median(fwd, variables, x), _median(grad, variables, x))
    layers.CPU_FORMS, layers.NATIVE_KERNELS = None, True
    return out


def main(argv):
    del argv
    path = os.path.join(bench_common.REPO, "benchmarks", "results", f"conv_forms_{jax.devices()[0].platform}.md")
    columns = ["conv", "shape (H, in, out, k, stride, groups)"]
    columns += [f"{name} {what} ms" for what in ("fwd", "grad") for name, _, _ in FORMS]
    for where, *shape in SHAPES:
        t = time_forms(*shape)
        cells = [f"{t[name][i]:.2f}" if name in t else "-" for i in (0, 1) for name, _, _ in FORMS]
        bench_common.append_row(path, f"# Conv forms ({bench_common.device_description()}, batch 2, float32)", columns,
                                [where, str(tuple(shape)), *cells])


if __name__ == "__main__":
    app.run(main)

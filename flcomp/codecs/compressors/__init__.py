"""The compressors, one module (or sub-package) per method: importing this registers them all.

Each reads like its paper: a config dataclass whose fields document their defaults,
and a `Compressor` subclass whose `encode`/`decode` are the method's math. They build
on the protocol core (`flcomp.codecs.compressor`, `wire`, `spec`, `errors`), the
coding primitives (`flcomp.codecs.coding`) and `@register`; none builds decoders or
pools, and none imports another compressor, except TPC, which takes any registered
codec for its residual through the registry.
"""

from flcomp.codecs.compressors import (  # noqa: F401
    blockwise,
    dgc,
    drive,
    eden,
    floats,
    gdsec,
    lag,
    lgc,
    natural,
    pipeline,
    powersgd,
    qsgd,
    randomk,
    scaled_sign,
    signxor,
    stc,
    terngrad,
    topk,
    tpc,
)

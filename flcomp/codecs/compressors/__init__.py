"""The compressors, one module (or sub-package) per method: importing this registers them all.

Each reads like its paper: a config dataclass whose fields document their defaults,
and a `Compressor` subclass whose `encode`/`decode` are the method's math. They build
on the protocol core (`flcomp.codecs.compressor`, `wire`, `spec`, `errors`), the
coding primitives (`flcomp.codecs.coding`) and `@register`; none builds decoders or
pools, and none imports another compressor, except TPC (the codec of its residual) and the ladder
(its rungs), which take registered codecs through the registry.
"""

from flcomp.codecs.compressors import (  # noqa: F401
    blockwise,
    dgc,
    drive,
    eden,
    floats,
    gdsec,
    ladder,
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

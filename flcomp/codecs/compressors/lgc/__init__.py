"""LGC, learned gradient compression: config, codec, server pool, autoencoder (torch).

Imports go one way: config ← autoencoder ← codec (lazily, where a leader computes a
code) ← pool; config ← codec, pool.
"""

from flcomp.codecs.compressors.lgc.codec import LGC
from flcomp.codecs.compressors.lgc.config import LGCConfig
from flcomp.codecs.compressors.lgc.pool import LGCPool
from flcomp.codecs.registry import register

register(LGC, pool=LGCPool)

__all__ = ["LGC", "LGCConfig", "LGCPool"]

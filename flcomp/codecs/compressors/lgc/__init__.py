"""LGC, learned gradient compression: config and codec, server pool, autoencoder (torch)."""

from flcomp.codecs.compressors.lgc.codec import LGC, LGCConfig
from flcomp.codecs.compressors.lgc.pool import LGCPool
from flcomp.codecs.registry import register

register(LGC, pool=LGCPool)

__all__ = ["LGC", "LGCConfig", "LGCPool"]

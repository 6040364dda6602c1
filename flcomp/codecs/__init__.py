"""flcomp.codecs: the compressors, their wire format and the loss-safe link protocol.

Pure NumPy (plus constriction for range coding): no Flower, no Ray; torch only in LGC's
autoencoder (`compressors.lgc.autoencoder`), imported when an LGC server or leader needs it.

    from flcomp.codecs import ModelSpec, codec
    spec = ModelSpec.of(params)                       # shapes and dtypes of the update
    c = codec("topk", ratio=0.01)                     # any name from available()
    enc, dec = c.encoder(spec, seed=7), c.decoder(spec)
    payload = enc.encode(update)                      # bytes; bits = 8 * len(payload)
    update_hat = dec.decode(payload)                  # PayloadError if malformed
    dec.commit(); enc.sync(dec.fingerprint)           # delivered: both sides advance
"""

# Importing the compressors registers them (their list is flcomp.codecs.compressors).
from flcomp.codecs import compressors  # noqa: F401
from flcomp.codecs.compressor import Compressor, RoundContext, State, Stats, Step, TensorCompressor
from flcomp.codecs.endpoints import Decoder, DecoderPool, Encoder, RoundDecoding
from flcomp.codecs.errors import CodecError, PayloadError, ProtocolError, StateMismatchError
from flcomp.codecs.registry import REGISTRY, Codec, available, codec, register
from flcomp.codecs.spec import ModelSpec, TensorSpec
from flcomp.codecs.wire import FORMAT_VERSION, HEADER_BYTES
from flcomp.codecs.wrappers.error_feedback import ErrorFeedback

__all__ = [
    "FORMAT_VERSION",
    "HEADER_BYTES",
    "REGISTRY",
    "Codec",
    "CodecError",
    "Compressor",
    "Decoder",
    "DecoderPool",
    "Encoder",
    "ErrorFeedback",
    "ModelSpec",
    "PayloadError",
    "ProtocolError",
    "RoundContext",
    "RoundDecoding",
    "State",
    "Stats",
    "StateMismatchError",
    "Step",
    "TensorCompressor",
    "TensorSpec",
    "available",
    "codec",
    "register",
]

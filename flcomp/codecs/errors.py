"""The exceptions of the codec layer.

`PayloadError` is the one exception a decoder raises for bytes it cannot accept:
truncated, extended, corrupted, of another codec or format version, inconsistent
with the model spec, or holding NaN/Inf. Callers catch it, drop that payload and
go on; the decoder's state is left untouched.
"""


class CodecError(Exception):
    """Base class of every error raised by flcomp.codecs."""


class PayloadError(CodecError, ValueError):
    """A payload that cannot be decoded; the decoder's state is unchanged."""


class StateMismatchError(PayloadError):
    """The payload was encoded against a state the decoder does not hold.

    Raised when the header's state fingerprint differs from the decoder's. The
    recovery is a key frame: the sender calls `Encoder.request_key_frame()` (or
    `Encoder.sync()` with the decoder's fingerprint does it) and its next payload
    no longer depends on past state.
    """


class ProtocolError(CodecError, RuntimeError):
    """An endpoint was driven out of order, e.g. `encode` with a step still pending."""

"""Wrappers around any compressor that change only what goes into it: error feedback, momentum."""

from flcomp.codecs.wrappers.error_feedback import ErrorFeedback
from flcomp.codecs.wrappers.momentum import Momentum

__all__ = ["ErrorFeedback", "Momentum"]

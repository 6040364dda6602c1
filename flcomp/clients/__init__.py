"""flcomp.clients: the Flower ClientApp side (a mod that compresses uploads)."""

from flcomp.clients.mod import compression_mod

__all__ = ["compression_mod"]

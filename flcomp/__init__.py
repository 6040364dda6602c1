"""flcomp: communication-efficient federated learning over wireless links, on Flower."""

__version__ = "0.1.0"

"""What both Flower sides share: record keys, the payload Array, Array <-> ndarray.

`flcomp.clients` (the mod) and `flcomp.strategies` (the wrapper) import this package,
never each other.
"""

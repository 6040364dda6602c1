"""Lossless coding primitives: range and Rice codes, positions, sparse values, packed levels, signs."""

"""interpolate: forward and backward (NumPy or CuPy arrays)."""
__all__ = []

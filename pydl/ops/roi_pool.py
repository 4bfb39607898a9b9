"""roi_pool: detection operator (NumPy or CuPy arrays)."""
__all__ = []

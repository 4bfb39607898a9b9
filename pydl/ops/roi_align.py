"""roi_align: detection operator (NumPy or CuPy arrays)."""
__all__ = []

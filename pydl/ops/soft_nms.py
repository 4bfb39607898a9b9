"""soft_nms: detection operator (NumPy or CuPy arrays)."""
__all__ = []

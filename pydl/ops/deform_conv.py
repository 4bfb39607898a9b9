"""deform_conv: detection operator (NumPy or CuPy arrays)."""
__all__ = []

"""local_response_norm: forward and backward (NumPy or CuPy arrays)."""
__all__ = []

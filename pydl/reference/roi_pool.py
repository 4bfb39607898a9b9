"""roi_pool: the NumPy twin (naive, float64-friendly; the test oracle)."""
__all__ = []

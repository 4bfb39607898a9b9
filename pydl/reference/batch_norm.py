"""batch_norm: the NumPy twin (oracle for tests, baseline for benchmarks)."""

__all__ = []

"""pydl.metrics: precision-recall curves, average precision and detection mAP (NumPy)."""
__all__ = []

"""nms: non-maximum suppression and box IoU (dispatch in pydl._backend)."""

__all__ = []

"""nms: NumPy twin of pydl.ops.nms, batched_nms, box_iou."""

__all__ = []

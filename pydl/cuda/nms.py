"""nms: CuPy glue over the CUDA kernels in cuda/nms.cu (same signatures as pydl._cpu)."""
from .. import _backend


def nms(boxes, scores, idxs, iou_threshold, out):
    """Greedy NMS on the GPU (idxs: int64 categories or None); kept indices to out[:count].

    Returns count, the only value read back to the host (one stream sync).
    """
    import cupy

    n = int(boxes.shape[0])
    if n == 0:
        return 0
    cuda = _backend.cuda()
    with boxes.device:
        ws_bytes = cuda.nms_workspace_bytes(n, boxes.dtype.itemsize)
        ws = cupy.empty((ws_bytes,), dtype=cupy.uint8)
        count = cupy.empty((1,), dtype=cupy.int64)
        cuda.nms_forward(_backend.ptr(boxes), _backend.ptr(scores), 0 if idxs is None else _backend.ptr(idxs),
                         n, float(iou_threshold), boxes.dtype.itemsize, _backend.ptr(out), _backend.ptr(count),
                         _backend.ptr(ws), ws_bytes, _backend.stream_ptr(cupy))
        return int(count.get()[0])


def box_iou(boxes1, boxes2, out):
    """Pairwise IoU into out (N, M) on the GPU."""
    import cupy

    cuda = _backend.cuda()
    with boxes1.device:
        cuda.box_iou_forward(_backend.ptr(boxes1), int(boxes1.shape[0]), _backend.ptr(boxes2), int(boxes2.shape[0]),
                             boxes1.dtype.itemsize, _backend.ptr(out), _backend.stream_ptr(cupy))

"""soft_nms: CuPy glue over the CUDA kernel in cuda/soft_nms.cu (same signature as pydl._cpu)."""
from .. import _backend


def soft_nms(boxes, scores, sigma, score_threshold, method, iou_threshold, keep, kept_scores):
    """Soft-NMS on the GPU (one block, all picks on the device); returns count.

    count is the only value read back to the host (one stream sync).
    """
    import cupy

    n = int(boxes.shape[0])
    if n == 0:
        return 0
    cuda = _backend.cuda()
    with boxes.device:
        work = cupy.empty((n,), dtype=cupy.float64)
        count = cupy.empty((1,), dtype=cupy.int64)
        cuda.soft_nms_forward(_backend.ptr(boxes), _backend.ptr(scores), n, float(sigma), float(score_threshold),
                              int(method), float(iou_threshold), boxes.dtype.itemsize, _backend.ptr(work),
                              _backend.ptr(keep), _backend.ptr(kept_scores), _backend.ptr(count),
                              _backend.stream_ptr(cupy))
        return int(count.get()[0])

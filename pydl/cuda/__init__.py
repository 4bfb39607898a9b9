"""CuPy glue over pydl._cuda, one module per op (conv, pool, batch_norm, cross_entropy, nms).

Each module offers the same kernel functions, with the same signatures, as pydl._cpu
does for NumPy arrays, taking CuPy arrays instead: it unpacks device pointers, enters
the arrays' device and launches on CuPy's current stream. pydl.functional picks one or
the other through pydl._backend.kernels(xp, op); nothing else knows about devices.
"""

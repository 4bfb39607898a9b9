"""Output-size arithmetic: the one Python copy of csrc/geometry.h (tests/test_geometry.py
holds the two against each other)."""


def conv_out_size(inp: int, k: int, s: int, p: int, d: int) -> int:
    return (inp + 2 * p - d * (k - 1) - 1) // s + 1


def conv_transpose_out_size(inp: int, k: int, s: int, p: int, d: int, op: int) -> int:
    return (inp - 1) * s - 2 * p + d * (k - 1) + op + 1


def pool_out_size(inp: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    span = inp + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= inp + p:
        out -= 1
    return out


def adaptive_start(i: int, out: int, inp: int) -> int:
    return (i * inp) // out


def adaptive_end(i: int, out: int, inp: int) -> int:
    return -(-((i + 1) * inp) // out)


def same_padding(k: int, d: int) -> tuple[int, int]:
    """(before, after) padding that keeps the size at stride 1; PyTorch puts the extra on the right."""
    total = d * (k - 1)
    return total // 2, total - total // 2

"""batch_norm: functional forward/backward (dispatch in pydl._backend)."""

__all__ = []

"""The emulation's stand-in for the capture-safe cuBLAS GEMM
(:class:`gpubackprop.backends.cupy.cublas_capture.CaptureGemm`).

Same interface and the same checks of its operands; the product is NumPy's
``matmul`` into ``out=`` through the fake ``cupy``, so a stream that captures
records it as it records the kernels. cuBLAS issues a product on the stream
its handle was bound to, not on CuPy's current stream: a product issued while
another stream is current (a missing :meth:`bind` before recording, say)
raises here, where on a GPU it would run at once, outside the graph.
"""

from __future__ import annotations

from gpubackprop.backends.cupy.cublas_capture import check_operands


class EmulatedCaptureGemm:
    """``bind(stream_ptr, tf32)``, then ``gemm(A, B, trans_a, trans_b, out)``.

    Attributes
    ----------
    bound : tuple or None
        ``(stream_ptr, tf32)`` of the last :meth:`bind`.
    """

    def __init__(self, xp):
        self.xp = xp
        self.bound = None

    def bind(self, stream_ptr: int, tf32: bool) -> None:
        self.bound = (stream_ptr, bool(tf32))

    def gemm(self, A, B, trans_a: bool = False, trans_b: bool = False, out=None):
        if self.bound is None:
            raise RuntimeError("CaptureGemm.gemm before bind(): no stream chosen")
        check_operands(A, B, trans_a, trans_b, out)
        current = self.xp.cuda.get_current_stream().ptr
        if self.bound[0] != current:
            raise RuntimeError(f"a product issued on stream {self.bound[0]} while stream "
                               f"{current} is current: bind() the handle to it first")
        return self.xp.matmul(A.T if trans_a else A, B.T if trans_b else B, out=out)

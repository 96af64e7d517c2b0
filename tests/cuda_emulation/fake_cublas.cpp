// A host stand-in for the five libcublas functions CaptureGemm calls through ctypes
// (gpubackprop/backends/cupy/cublas_capture.py), with cuBLAS's signatures: a naive
// column-major GEMM on host memory, so the ctypes marshalling (argument order and
// types, the row-major to column-major swap, alpha and beta by pointer) runs on the CPU.
// As cuBLAS does, cublasSetStream_v2 resets the workspace; a product without a user
// workspace, with mixed data types or a compute type that does not fit them is refused
// (status 7, CUBLAS_STATUS_INVALID_VALUE). The enumeration values are cuBLAS's.
#include <cstddef>

namespace {
struct Handle {
    void* stream = nullptr;
    void* workspace = nullptr;
    size_t workspace_bytes = 0;
    int math_mode = -1;
    int products = 0;
    int last_compute_type = 0;
};
enum { OK = 0, INVALID_VALUE = 7, R_32F = 0, R_64F = 1, COMPUTE_32F = 68,
       COMPUTE_32F_FAST_TF32 = 77, COMPUTE_64F = 70 };

template <typename T>
void gemm(int transa, int transb, int m, int n, int k, const T* alpha, const T* A, int lda,
          const T* B, int ldb, const T* beta, T* C, int ldc) {
    for (int j = 0; j < n; ++j) {
        for (int i = 0; i < m; ++i) {
            T sum = T(0);
            for (int l = 0; l < k; ++l) {
                const T a = transa ? A[l + i * lda] : A[i + l * lda];
                const T b = transb ? B[j + l * ldb] : B[l + j * ldb];
                sum += a * b;
            }
            C[i + j * ldc] = *alpha * sum + (*beta == T(0) ? T(0) : *beta * C[i + j * ldc]);
        }
    }
}
}  // namespace

extern "C" {
int cublasCreate_v2(void** handle) {
    *handle = new Handle();
    return OK;
}
int cublasSetStream_v2(void* handle, void* stream) {
    Handle* h = static_cast<Handle*>(handle);
    h->stream = stream;
    h->workspace = nullptr;
    h->workspace_bytes = 0;
    return OK;
}
int cublasSetWorkspace_v2(void* handle, void* workspace, size_t bytes) {
    Handle* h = static_cast<Handle*>(handle);
    h->workspace = workspace;
    h->workspace_bytes = bytes;
    return OK;
}
int cublasSetMathMode(void* handle, int mode) {
    static_cast<Handle*>(handle)->math_mode = mode;
    return OK;
}
int cublasGemmEx(void* handle, int transa, int transb, int m, int n, int k, const void* alpha,
                 const void* A, int Atype, int lda, const void* B, int Btype, int ldb,
                 const void* beta, void* C, int Ctype, int ldc, int computeType, int algo) {
    Handle* h = static_cast<Handle*>(handle);
    if (h->workspace == nullptr || Atype != Btype || Btype != Ctype) return INVALID_VALUE;
    h->last_compute_type = computeType;
    if (Ctype == R_32F && (computeType == COMPUTE_32F || computeType == COMPUTE_32F_FAST_TF32)) {
        gemm(transa, transb, m, n, k, static_cast<const float*>(alpha),
             static_cast<const float*>(A), lda, static_cast<const float*>(B), ldb,
             static_cast<const float*>(beta), static_cast<float*>(C), ldc);
    } else if (Ctype == R_64F && computeType == COMPUTE_64F) {
        gemm(transa, transb, m, n, k, static_cast<const double*>(alpha),
             static_cast<const double*>(A), lda, static_cast<const double*>(B), ldb,
             static_cast<const double*>(beta), static_cast<double*>(C), ldc);
    } else {
        return INVALID_VALUE;
    }
    ++h->products;
    return OK;
}
// What the tests read back: the handle's stream, workspace and last compute type.
void* fake_cublas_stream(void* handle) { return static_cast<Handle*>(handle)->stream; }
void* fake_cublas_workspace(void* handle) { return static_cast<Handle*>(handle)->workspace; }
int fake_cublas_compute_type(void* handle) {
    return static_cast<Handle*>(handle)->last_compute_type;
}
int fake_cublas_products(void* handle) { return static_cast<Handle*>(handle)->products; }
}

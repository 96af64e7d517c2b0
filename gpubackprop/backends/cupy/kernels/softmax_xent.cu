// Softmax + cross-entropy loss and gradient in one pass over the logits.
//
// One warp (32 lanes) per row, rows visited with a grid-stride loop; the block
// size must be a multiple of 32. Per row: the row max m, s = sum exp(z - m),
// the loss -sum t (z - m - log s) (log-softmax, never exp of a large number),
// and dZ = (exp(z - m) / s - t) * inv_n. Templated on T = float or double and on
// the index type I (int or long long; see activations.cu).

__device__ __forceinline__ float gbp_exp(float x) { return expf(x); }
__device__ __forceinline__ double gbp_exp(double x) { return exp(x); }
__device__ __forceinline__ float gbp_log(float x) { return logf(x); }
__device__ __forceinline__ double gbp_log(double x) { return log(x); }

// Z, Tg, dZ (n_rows, n_cols) C-contiguous; row_loss (n_rows,); inv_n = 1 / n_rows.
template <typename T, typename I>
__global__ void softmax_xent(const T* Z, const T* Tg, T* dZ, T* row_loss, I n_rows, I n_cols,
                             T inv_n) {
    const unsigned int full = 0xffffffffu;
    const int lane = threadIdx.x & 31;
    const I first = ((I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x) >> 5;
    const I n_warps = ((I)gridDim.x * (I)blockDim.x) >> 5;
    // The row index is the same for all 32 lanes, so every shuffle below is warp-uniform.
    for (I row = first; row < n_rows; row += n_warps) {
        const T* z = Z + row * n_cols;
        const T* t = Tg + row * n_cols;
        T* d = dZ + row * n_cols;

        T m = z[0];
        for (I j = lane; j < n_cols; j += 32) m = z[j] > m ? z[j] : m;
        for (int offset = 16; offset > 0; offset >>= 1) {
            const T other = __shfl_xor_sync(full, m, offset);
            m = other > m ? other : m;
        }

        T s = T(0);
        for (I j = lane; j < n_cols; j += 32) {
            const T e = gbp_exp(z[j] - m);
            d[j] = e;  // read back below by the same lane
            s += e;
        }
        for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_xor_sync(full, s, offset);
        const T log_s = gbp_log(s);

        T loss = T(0);
        for (I j = lane; j < n_cols; j += 32) {
            loss += t[j] * ((z[j] - m) - log_s);
            d[j] = (d[j] / s - t[j]) * inv_n;
        }
        for (int offset = 16; offset > 0; offset >>= 1) loss += __shfl_xor_sync(full, loss, offset);
        if (lane == 0) row_loss[row] = -loss;
    }
}

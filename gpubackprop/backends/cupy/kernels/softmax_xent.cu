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

// One step's results into the ring slot a device counter names, then the counter moves on:
// losses[c] = mean of row_loss; hits[c] = rows whose first largest logit (NaN counting as
// the largest, as NumPy's argmax) sits at the row's label, 0 when has_labels is 0;
// counter[0] = (c + 1) % slots. Z (n_rows, n_cols) C-contiguous; labels, row_loss (n_rows,).
// The first warp of block 0 does it all: the slot is chosen on the device, so a recorded
// step writes each replay's results to a slot of their own.
template <typename T, typename I>
__global__ void step_result(const T* Z, const T* row_loss, const long long* labels, T* losses,
                            long long* hits, long long* counter, I n_rows, I n_cols, I slots,
                            int has_labels) {
    if (blockIdx.x != 0 || threadIdx.x >= 32) return;
    const unsigned int full = 0xffffffffu;
    const int lane = threadIdx.x;
    T loss = T(0);
    long long hit = 0;
    for (I row = lane; row < n_rows; row += 32) {
        loss += row_loss[row];
        if (has_labels) {
            const T* z = Z + row * n_cols;
            I best = 0;
            for (I j = 1; j < n_cols; ++j) {
                const bool best_is_nan = z[best] != z[best];
                if (!best_is_nan && (z[j] > z[best] || z[j] != z[j])) best = j;
            }
            hit += best == (I)labels[row] ? 1 : 0;
        }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        loss += __shfl_xor_sync(full, loss, offset);
        hit += __shfl_xor_sync(full, hit, offset);
    }
    if (lane == 0) {
        const long long c = counter[0];
        losses[c] = loss / (T)n_rows;
        hits[c] = hit;
        counter[0] = (c + 1) % (long long)slots;
    }
}

// Fused optimizer updates: one launch per parameter array, n elements each.
//
// Scalars arrive already rounded to T (the host computes Adam's bias-corrected
// step size and eps the same way as Backend.adam_update), so the update matches
// the generic code term by term. Templated on T = float or double and on the
// index type I (int or long long; see activations.cu).

__device__ __forceinline__ float gbp_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double gbp_sqrt(double x) { return sqrt(x); }

// W -= lr dW.
template <typename T, typename I>
__global__ void sgd_step(T* W, const T* dW, I n, T lr) {
    const I stride = (I)blockDim.x * (I)gridDim.x;
    for (I i = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; i < n; i += stride) {
        W[i] -= lr * dW[i];
    }
}

// V = mu V - lr dW; W += V.
template <typename T, typename I>
__global__ void momentum_step(T* W, const T* dW, T* V, I n, T lr, T mu) {
    const I stride = (I)blockDim.x * (I)gridDim.x;
    for (I i = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; i < n; i += stride) {
        const T v = V[i] * mu - lr * dW[i];
        V[i] = v;
        W[i] += v;
    }
}

// M = b1 M + (1 - b1) g; V = b2 V + (1 - b2) g^2; W -= step_size M / (sqrt(V) + eps_hat).
template <typename T, typename I>
__global__ void adam_step(T* W, const T* dW, T* M, T* V, I n, T beta1,
                          T one_minus_beta1, T beta2, T one_minus_beta2, T step_size,
                          T eps_hat) {
    const I stride = (I)blockDim.x * (I)gridDim.x;
    for (I i = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; i < n; i += stride) {
        const T g = dW[i];
        const T m = M[i] * beta1 + one_minus_beta1 * g;
        const T v = V[i] * beta2 + one_minus_beta2 * (g * g);
        M[i] = m;
        V[i] = v;
        W[i] -= step_size * m / (gbp_sqrt(v) + eps_hat);
    }
}

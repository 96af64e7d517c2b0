// Fused activation kernels: bias + activation forward, activation backward from
// the saved output, and the Elman RNN hidden-state update.
//
// Templated on T = float or double; every constant is written T(...) so the
// float instantiation never computes in double. Templated also on the index
// type I: int where every index fits in 32 bits (the host decides; 64-bit
// division and modulo are emulated in software on NVIDIA GPUs), else long long.
// Activation codes (the `act` argument) follow ACTIVATION_CODES in gpubackprop/backends/cupy/backend.py:
// 0 sigmoid, 1 tanh, 2 relu, 3 identity.

__device__ __forceinline__ float gbp_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double gbp_tanh(double x) { return tanh(x); }

// f(z) for one element; sigmoid as 0.5 + 0.5 tanh(z / 2), which cannot overflow.
template <typename T>
__device__ __forceinline__ T gbp_activate(T z, int act) {
    switch (act) {
        case 0: {
            const T half = T(0.5);
            return half * gbp_tanh(half * z) + half;
        }
        case 1:
            return gbp_tanh(z);
        case 2:
            return z < T(0) ? T(0) : z;  // NaN passes through, as in numpy.maximum
        default:
            return z;
    }
}

// Y = f(Z + b[col]) in place on Z (n_rows, n_cols), C-contiguous; b (n_cols,).
template <typename T, typename I>
__global__ void bias_act(T* Z, const T* b, I n_rows, I n_cols, int act) {
    const I n = n_rows * n_cols;
    const I stride = (I)blockDim.x * (I)gridDim.x;
    for (I i = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; i < n; i += stride) {
        Z[i] = gbp_activate(Z[i] + b[i % n_cols], act);
    }
}

// dZ = dY * f'(Z) from the saved output Y, n elements; dZ may alias dY or Y.
// sigmoid (1 - Y) Y dY, tanh (1 - Y Y) dY, relu dY (Y > 0), identity dY.
template <typename T, typename I>
__global__ void act_backward(const T* dY, const T* Y, T* dZ, I n, int act) {
    const I stride = (I)blockDim.x * (I)gridDim.x;
    for (I i = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; i < n; i += stride) {
        const T y = Y[i];
        const T g = dY[i];
        T d;
        switch (act) {
            case 0: d = (T(1) - y) * y * g; break;
            case 1: d = (T(1) - y * y) * g; break;
            case 2: d = g * (y > T(0) ? T(1) : T(0)); break;
            default: d = g;
        }
        dZ[i] = d;
    }
}

// Elman step h = f(XW + HU + b[col]) in place on HU (n_rows, n_cols); b (n_cols,).
template <typename T, typename I>
__global__ void rnn_step(const T* XW, T* HU, const T* b, I n_rows, I n_cols, int act) {
    const I n = n_rows * n_cols;
    const I stride = (I)blockDim.x * (I)gridDim.x;
    for (I i = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; i < n; i += stride) {
        HU[i] = gbp_activate((HU[i] + XW[i]) + b[i % n_cols], act);
    }
}

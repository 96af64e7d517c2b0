// Fused activation kernels: bias + activation forward, activation backward from
// the saved output (or input), and the Elman RNN hidden-state update.
//
// Templated on T = float or double; every constant is written T(...) so the
// float instantiation never computes in double. Templated also on the index
// type I: int where every index fits in 32 bits (the host decides; 64-bit
// division and modulo are emulated in software on NVIDIA GPUs), else long long.
// Activation codes (the `act` argument) are the registry's
// (gpubackprop/nn/activations.py), generated into gbp_constants.h.

#include "activation_functions.cuh"
#include "gbp_constants.h"

// f(z) for one element.
template <typename T>
__device__ __forceinline__ T gbp_activate(T z, int act) {
    switch (act) {
        case GBP_ACT_SIGMOID:
            return gbp_sigmoid(z);
        case GBP_ACT_TANH:
            return gbp_tanh(z);
        case GBP_ACT_RELU:
            return z < T(0) ? T(0) : z;  // NaN passes through, as in numpy.maximum
        case GBP_ACT_SILU:
            return z * gbp_sigmoid(z);
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

// dZ = dY * f'(Z) from the saved array Y: the output f(Z), or the input Z for
// activations whose registry entry needs it (silu); n elements; dZ may alias dY or Y.
// sigmoid (1 - Y) Y dY, tanh (1 - Y Y) dY, relu dY (Y > 0), identity dY,
// silu s (1 + Z (1 - s)) dY with s = sigmoid(Z).
template <typename T, typename I>
__global__ void act_backward(const T* dY, const T* Y, T* dZ, I n, int act) {
    const I stride = (I)blockDim.x * (I)gridDim.x;
    for (I i = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; i < n; i += stride) {
        const T y = Y[i];
        const T g = dY[i];
        T d;
        switch (act) {
            case GBP_ACT_SIGMOID: d = (T(1) - y) * y * g; break;
            case GBP_ACT_TANH: d = (T(1) - y * y) * g; break;
            case GBP_ACT_RELU: d = g * (y > T(0) ? T(1) : T(0)); break;
            case GBP_ACT_SILU: {
                const T s = gbp_sigmoid(y);
                d = s * (T(1) + y * (T(1) - s)) * g;
                break;
            }
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

// Y = f(Z) for n elements; Y may alias Z.
template <typename T, typename I>
__global__ void act_forward(const T* Z, T* Y, I n, int act) {
    const I stride = (I)blockDim.x * (I)gridDim.x;
    for (I i = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; i < n; i += stride) {
        Y[i] = gbp_activate(Z[i], act);
    }
}

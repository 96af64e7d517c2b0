// The activation functions as device functions, shared by the kernel files that apply them
// (activations.cu, recurrent_cells.cu): sigmoid and tanh in the registry's forms
// (gpubackprop/nn/activations.py), overloaded for float and double so the float kernels
// never compute in double.
#pragma once

__device__ __forceinline__ float gbp_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double gbp_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float gbp_act_exp(float x) { return expf(x); }
__device__ __forceinline__ double gbp_act_exp(double x) { return exp(x); }

// 1 / (1 + e^-z) for z >= 0 and e^z / (1 + e^z) below, with e = exp(-|z|): no
// overflow, and a few ulps of relative accuracy in both tails. NaN stays NaN.
template <typename T>
__device__ __forceinline__ T gbp_sigmoid(T z) {
    const T e = gbp_act_exp(z < T(0) ? z : -z);
    return (z >= T(0) ? T(1) : e) / (T(1) + e);
}

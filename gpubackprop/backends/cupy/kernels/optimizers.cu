// Fused optimizer updates: one launch per parameter array, n elements each.
//
// Every update reads the optimizer's step state, a double vector on the device
// (indices in the generated gbp_constants.h; layout in gpubackprop/nn/update_rules.py),
// never host scalars: optimizer_advance starts each step on the device (step + 1,
// then the derived values, e.g. Adam's step size), so a recorded step stays right
// when a schedule changes the learning rate. The float kernels only load and convert
// state entries ((T) state[i]); everything computed in double is computed once, by
// optimizer_advance. The updates match Backend.<rule>_update term by term.
// Templated on T = float or double and on the index type I (int or long long; see
// activations.cu); optimizer_advance runs as <double, int> on the step state.

#include "gbp_constants.h"

__device__ __forceinline__ float gbp_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double gbp_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float gbp_pow(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double gbp_pow(double x, double y) { return pow(x, y); }

// Starts a step: state[STEP] += 1, then the rule's derived values. One thread; T is
// the state's type (double: the optimizers keep their state in float64); I is unused.
template <typename T, typename I>
__global__ void optimizer_advance(T* state, int rule) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    const T t = state[GBP_STEP] + T(1);
    state[GBP_STEP] = t;
    if (rule == GBP_RULE_RMSPROP) {
        state[GBP_RMSPROP_ONE_MINUS_ALPHA] = T(1) - state[GBP_RMSPROP_ALPHA];
    } else if (rule == GBP_RULE_ADAM) {
        const T beta1 = state[GBP_ADAM_BETA1], beta2 = state[GBP_ADAM_BETA2];
        state[GBP_ADAM_ONE_MINUS_BETA1] = T(1) - beta1;
        state[GBP_ADAM_ONE_MINUS_BETA2] = T(1) - beta2;
        // AdamW shrinks W by (1 - lr wd) before the step.
        state[GBP_ADAM_SHRINK] = state[GBP_ADAM_DECOUPLED] != T(0)
            ? T(1) - state[GBP_LR] * state[GBP_WEIGHT_DECAY] : T(1);
        const T correction2 = gbp_sqrt(T(1) - gbp_pow(beta2, t));
        state[GBP_ADAM_STEP_SIZE] = state[GBP_LR] * correction2 / (T(1) - gbp_pow(beta1, t));
        // eps scaled like the bias-corrected form (pytorch), or as given (sklearn).
        const T eps = state[GBP_ADAM_EPS];
        state[GBP_ADAM_EPS_HAT] = state[GBP_ADAM_CONVENTION] != T(0) ? eps : eps * correction2;
    }
}

// W -= lr (dW + wd W).
template <typename T, typename I>
__global__ void sgd_step(T* W, const T* dW, const double* state, I n) {
    const T lr = (T)state[GBP_LR], wd = (T)state[GBP_WEIGHT_DECAY];
    const I stride = (I)blockDim.x * (I)gridDim.x;
    for (I i = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; i < n; i += stride) {
        W[i] -= lr * (dW[i] + wd * W[i]);
    }
}

// g = dW + wd W. PyTorch: V = mu V + g; W -= lr V (Nesterov: W -= lr (g + mu V)).
// Heavy ball (sklearn): V = mu V - lr g; W += V (Nesterov: W += mu V - lr g).
template <typename T, typename I>
__global__ void momentum_step(T* W, const T* dW, T* V, const double* state, I n) {
    const T lr = (T)state[GBP_LR], wd = (T)state[GBP_WEIGHT_DECAY];
    const T mu = (T)state[GBP_MOMENTUM_MOMENTUM];
    const bool nesterov = (T)state[GBP_MOMENTUM_NESTEROV] != T(0);
    const bool heavy_ball = (T)state[GBP_MOMENTUM_CONVENTION] != T(0);
    const I stride = (I)blockDim.x * (I)gridDim.x;
    for (I i = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; i < n; i += stride) {
        const T g = dW[i] + wd * W[i];
        if (heavy_ball) {
            const T v = mu * V[i] - lr * g;
            V[i] = v;
            W[i] += nesterov ? mu * v - lr * g : v;
        } else {
            const T b = mu * V[i] + g;
            V[i] = b;
            W[i] -= nesterov ? lr * (g + mu * b) : lr * b;
        }
    }
}

// Adam and AdamW: w = shrink W (AdamW) and g = dW, or g = dW + wd W (coupled L2);
// M = b1 M + (1 - b1) g; V = b2 V + (1 - b2) g^2; W = w - step_size M / (sqrt(V) + eps_hat).
template <typename T, typename I>
__global__ void adam_step(T* W, const T* dW, T* M, T* V, const double* state, I n) {
    const T beta1 = (T)state[GBP_ADAM_BETA1], beta2 = (T)state[GBP_ADAM_BETA2];
    const T one_minus_beta1 = (T)state[GBP_ADAM_ONE_MINUS_BETA1];
    const T one_minus_beta2 = (T)state[GBP_ADAM_ONE_MINUS_BETA2];
    const T step_size = (T)state[GBP_ADAM_STEP_SIZE], eps_hat = (T)state[GBP_ADAM_EPS_HAT];
    const bool decoupled = (T)state[GBP_ADAM_DECOUPLED] != T(0);
    const T wd = decoupled ? T(0) : (T)state[GBP_WEIGHT_DECAY];
    const T shrink = (T)state[GBP_ADAM_SHRINK];
    const I stride = (I)blockDim.x * (I)gridDim.x;
    for (I i = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; i < n; i += stride) {
        const T w = decoupled ? W[i] * shrink : W[i];
        const T g = dW[i] + wd * w;
        const T m = beta1 * M[i] + one_minus_beta1 * g;
        const T v = beta2 * V[i] + one_minus_beta2 * (g * g);
        M[i] = m;
        V[i] = v;
        W[i] = w - step_size * m / (gbp_sqrt(v) + eps_hat);
    }
}

// RMSprop (torch.optim.RMSprop): g = dW + wd W; V = a V + (1 - a) g^2; centered:
// G = a G + (1 - a) g, d = sqrt(V - G^2) + eps, else d = sqrt(V) + eps; momentum:
// B = mu B + g / d, W -= lr B, else W -= lr g / d. B and G are read only when on.
template <typename T, typename I>
__global__ void rmsprop_step(T* W, const T* dW, T* V, T* B, T* G, const double* state,
                             I n) {
    const T lr = (T)state[GBP_LR], wd = (T)state[GBP_WEIGHT_DECAY];
    const T alpha = (T)state[GBP_RMSPROP_ALPHA];
    const T one_minus_alpha = (T)state[GBP_RMSPROP_ONE_MINUS_ALPHA];
    const T eps = (T)state[GBP_RMSPROP_EPS], mu = (T)state[GBP_RMSPROP_MOMENTUM];
    const bool centered = (T)state[GBP_RMSPROP_CENTERED] != T(0);
    const bool momentum = mu != T(0);
    const I stride = (I)blockDim.x * (I)gridDim.x;
    for (I i = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; i < n; i += stride) {
        const T g = dW[i] + wd * W[i];
        const T v = alpha * V[i] + one_minus_alpha * (g * g);
        V[i] = v;
        T denom;
        if (centered) {
            const T a = alpha * G[i] + one_minus_alpha * g;
            G[i] = a;
            denom = gbp_sqrt(v - a * a) + eps;
        } else {
            denom = gbp_sqrt(v) + eps;
        }
        if (momentum) {
            const T b = mu * B[i] + g / denom;
            B[i] = b;
            W[i] -= lr * b;
        } else {
            W[i] -= lr * g / denom;
        }
    }
}

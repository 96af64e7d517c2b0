// Fused LSTM and GRU cells: one launch per time step forward and one backward, everything
// between the step's matrix products (gate nonlinearities, cell and hidden-state updates,
// and their derivatives).
//
// Gate layouts are PyTorch's (torch.nn.LSTM, torch.nn.GRU): a row of the LSTM's G holds the
// pre-activations of the gates i, f, g, o, each H wide; a row of the GRU's Gx and Gh holds
// r, z, n. One thread per (row, unit) element of the (n_rows, n_cols = H) state, in a
// grid-stride loop; a thread reads every input of its element before it writes, so each
// output may be the same array as an input of its shape (the backend refuses partial
// overlap). Templated on T (float or double; constants written T(...)) and the index type I
// (int or long long), as activations.cu. sigmoid and tanh are the registry's forms, from
// activation_functions.cuh.

#include "activation_functions.cuh"

// LSTM step forward. G (n_rows, 4 n_cols) pre-activations [i f g o]; c_prev, h, c
// (n_rows, n_cols). Writes gates (n_rows, 4 n_cols) = [sigmoid(i) sigmoid(f) tanh(g)
// sigmoid(o)], c = f c_prev + i g and h = o tanh(c).
template <typename T, typename I>
__global__ void lstm_cell_forward(const T* G, const T* c_prev, T* h, T* c, T* gates, I n_rows,
                                  I n_cols) {
    const I n = n_rows * n_cols;
    const I stride = (I)blockDim.x * (I)gridDim.x;
    for (I k = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; k < n; k += stride) {
        const I row = k / n_cols;
        const I at = k + 3 * row * n_cols;  // gate i of this element in a 4 n_cols row
        // The gate nonlinearities.
        const T i = gbp_sigmoid(G[at]);
        const T f = gbp_sigmoid(G[at + n_cols]);
        const T g = gbp_tanh(G[at + 2 * n_cols]);
        const T o = gbp_sigmoid(G[at + 3 * n_cols]);
        // The cell update, then the hidden state.
        const T c_new = f * c_prev[k] + i * g;
        gates[at] = i;
        gates[at + n_cols] = f;
        gates[at + 2 * n_cols] = g;
        gates[at + 3 * n_cols] = o;
        c[k] = c_new;
        h[k] = o * gbp_tanh(c_new);
    }
}

// LSTM step backward. gates (n_rows, 4 n_cols) as saved by lstm_cell_forward; dh, dc,
// c_prev, c (n_rows, n_cols): the gradient into h_t (from the output and step t + 1), into
// c_t from step t + 1, and the step's cells. Writes dG (n_rows, 4 n_cols), the gradient
// with respect to the pre-activations [i f g o], and dc_prev = dL/dc_{t-1}.
template <typename T, typename I>
__global__ void lstm_cell_backward(const T* gates, const T* dh, const T* dc, const T* c_prev,
                                   const T* c, T* dG, T* dc_prev, I n_rows, I n_cols) {
    const I n = n_rows * n_cols;
    const I stride = (I)blockDim.x * (I)gridDim.x;
    for (I k = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; k < n; k += stride) {
        const I row = k / n_cols;
        const I at = k + 3 * row * n_cols;
        const T i = gates[at];
        const T f = gates[at + n_cols];
        const T g = gates[at + 2 * n_cols];
        const T o = gates[at + 3 * n_cols];
        const T dh_k = dh[k];
        const T cp = c_prev[k];
        // h = o tanh(c): the output gate's share, and the cell's total gradient.
        const T tc = gbp_tanh(c[k]);
        const T d_o = dh_k * tc;
        const T d_c = (T(1) - tc * tc) * o * dh_k + dc[k];
        // c = f c_prev + i g: each gate's share, and the previous cell's.
        const T d_i = d_c * g;
        const T d_f = d_c * cp;
        const T d_g = d_c * i;
        dc_prev[k] = d_c * f;
        // Through the nonlinearities, from their outputs: sigmoid' = (1 - y) y, tanh' = 1 - y^2.
        dG[at] = d_i * ((T(1) - i) * i);
        dG[at + n_cols] = d_f * ((T(1) - f) * f);
        dG[at + 2 * n_cols] = d_g * (T(1) - g * g);
        dG[at + 3 * n_cols] = d_o * ((T(1) - o) * o);
    }
}

// GRU step forward. Gx, Gh (n_rows, 3 n_cols): x W_ih^T + b_ih and h_prev W_hh^T + b_hh,
// [r z n]; h_prev, h (n_rows, n_cols). Writes h = (1 - z) n + z h_prev with r = sigmoid(Gx_r
// + Gh_r), z = sigmoid(Gx_z + Gh_z), n = tanh(Gx_n + r Gh_n), and gates (n_rows, 4 n_cols) =
// [r z n Gh_n] for the backward pass.
template <typename T, typename I>
__global__ void gru_cell_forward(T* gates, const T* Gx, const T* Gh, const T* h_prev, T* h,
                                 I n_rows, I n_cols) {
    const I n_elements = n_rows * n_cols;
    const I stride = (I)blockDim.x * (I)gridDim.x;
    for (I k = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; k < n_elements; k += stride) {
        const I row = k / n_cols;
        const I at = k + 2 * row * n_cols;  // gate r of this element in a 3 n_cols row
        const I saved = k + 3 * row * n_cols;  // r of this element in a 4 n_cols row
        // The reset and update gates, then the candidate state.
        const T r = gbp_sigmoid(Gx[at] + Gh[at]);
        const T z = gbp_sigmoid(Gx[at + n_cols] + Gh[at + n_cols]);
        const T gh_n = Gh[at + 2 * n_cols];
        const T n = gbp_tanh(r * gh_n + Gx[at + 2 * n_cols]);
        // The new hidden state between the candidate and the previous one: n + z (h_prev - n).
        const T h_new = n + z * (h_prev[k] - n);
        gates[saved] = r;
        gates[saved + n_cols] = z;
        gates[saved + 2 * n_cols] = n;
        gates[saved + 3 * n_cols] = gh_n;
        h[k] = h_new;
    }
}

// GRU step backward. gates (n_rows, 4 n_cols) as saved by gru_cell_forward; dh, h_prev
// (n_rows, n_cols): the gradient into h_t and the previous state. Writes dGx, dGh
// (n_rows, 3 n_cols), the gradients with respect to the two projections [r z n], and
// dh_prev = dh z, the direct share of dL/dh_{t-1} (its share through dGh W_hh is a GEMM).
template <typename T, typename I>
__global__ void gru_cell_backward(const T* gates, const T* dh, const T* h_prev, T* dGx, T* dGh,
                                  T* dh_prev, I n_rows, I n_cols) {
    const I n_elements = n_rows * n_cols;
    const I stride = (I)blockDim.x * (I)gridDim.x;
    for (I k = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; k < n_elements; k += stride) {
        const I row = k / n_cols;
        const I at = k + 2 * row * n_cols;
        const I saved = k + 3 * row * n_cols;
        const T r = gates[saved];
        const T z = gates[saved + n_cols];
        const T n = gates[saved + 2 * n_cols];
        const T gh_n = gates[saved + 3 * n_cols];
        const T dh_k = dh[k];
        // h = (1 - z) n + z h_prev: the candidate's, the update gate's and h_prev's shares.
        const T d_n = (T(1) - z) * dh_k;
        const T d_z = (h_prev[k] - n) * dh_k;
        dh_prev[k] = dh_k * z;
        // Through tanh: the candidate's pre-activation Gx_n + r Gh_n, and the reset gate's share.
        const T d_an = d_n * (T(1) - n * n);
        const T d_r = d_an * gh_n;
        // Through the sigmoids: r and z see Gx and Gh alike.
        const T d_ar = d_r * ((T(1) - r) * r);
        const T d_az = d_z * ((T(1) - z) * z);
        dGx[at] = d_ar;
        dGx[at + n_cols] = d_az;
        dGx[at + 2 * n_cols] = d_an;
        dGh[at] = d_ar;
        dGh[at + n_cols] = d_az;
        dGh[at + 2 * n_cols] = d_an * r;
    }
}

// Generated from gpubackprop/nn/activations.py; do not edit. Regenerate with
//     python -m gpubackprop.nn.activation_header
// Activation codes of the `act` argument of the kernels in activations.cu.
#pragma once

#define GBP_ACT_IDENTITY 0
#define GBP_ACT_RELU 1
#define GBP_ACT_SIGMOID 2
#define GBP_ACT_TANH 3
#define GBP_ACT_SILU 4

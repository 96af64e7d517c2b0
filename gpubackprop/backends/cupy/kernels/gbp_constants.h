// Generated from gpubackprop/nn/activations.py and gpubackprop/nn/update_rules.py
// by python -m gpubackprop.backends.cupy.constants_header; do not edit.
// The constants the kernels share with Python: activation codes, update-rule codes
// and step-state indices.
#pragma once

// Activation codes (the act argument of the kernels in activations.cu).
constexpr int GBP_ACT_IDENTITY = 0;
constexpr int GBP_ACT_RELU = 1;
constexpr int GBP_ACT_SIGMOID = 2;
constexpr int GBP_ACT_TANH = 3;
constexpr int GBP_ACT_SILU = 4;

// Update rules (the rule argument of optimizer_advance).
constexpr int GBP_RULE_SGD = 0;
constexpr int GBP_RULE_MOMENTUM = 1;
constexpr int GBP_RULE_ADAM = 2;
constexpr int GBP_RULE_RMSPROP = 3;

// Entries of every step state. An optimizer's step state is one double vector on the
// device: these entries, then its rule's hyperparameters and derived values (below; see
// gpubackprop.nn.update_rules). Kernels read entries by these indices.
constexpr int GBP_STEP = 0;
constexpr int GBP_LR = 1;
constexpr int GBP_WEIGHT_DECAY = 2;

// momentum: momentum, nesterov, convention.
constexpr int GBP_MOMENTUM_MOMENTUM = 3;
constexpr int GBP_MOMENTUM_NESTEROV = 4;
constexpr int GBP_MOMENTUM_CONVENTION = 5;

// adam: beta1, beta2, eps, convention, decoupled, one_minus_beta1, one_minus_beta2,
// shrink, step_size, eps_hat.
constexpr int GBP_ADAM_BETA1 = 3;
constexpr int GBP_ADAM_BETA2 = 4;
constexpr int GBP_ADAM_EPS = 5;
constexpr int GBP_ADAM_CONVENTION = 6;
constexpr int GBP_ADAM_DECOUPLED = 7;
constexpr int GBP_ADAM_ONE_MINUS_BETA1 = 8;
constexpr int GBP_ADAM_ONE_MINUS_BETA2 = 9;
constexpr int GBP_ADAM_SHRINK = 10;
constexpr int GBP_ADAM_STEP_SIZE = 11;
constexpr int GBP_ADAM_EPS_HAT = 12;

// rmsprop: alpha, eps, momentum, centered, one_minus_alpha.
constexpr int GBP_RMSPROP_ALPHA = 3;
constexpr int GBP_RMSPROP_EPS = 4;
constexpr int GBP_RMSPROP_MOMENTUM = 5;
constexpr int GBP_RMSPROP_CENTERED = 6;
constexpr int GBP_RMSPROP_ONE_MINUS_ALPHA = 7;

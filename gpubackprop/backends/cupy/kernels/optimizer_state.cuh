// Generated from gpubackprop/nn/optim.py by
// python -m gpubackprop.backends.cupy.optimizer_header; do not edit.
//
// An optimizer's step state is one double vector on the device: the common
// entries, then its rule's hyperparameters and derived values (see
// gpubackprop.nn.optim). Kernels read entries by these indices.
#pragma once

// Update rules (the rule argument of optimizer_advance).
constexpr int GBP_RULE_SGD = 0;
constexpr int GBP_RULE_MOMENTUM = 1;
constexpr int GBP_RULE_ADAM = 2;
constexpr int GBP_RULE_RMSPROP = 3;

// Entries of every step state.
constexpr int GBP_STEP = 0;
constexpr int GBP_LR = 1;
constexpr int GBP_WEIGHT_DECAY = 2;

// momentum: momentum, nesterov, convention.
constexpr int GBP_MOMENTUM_MOMENTUM = 3;
constexpr int GBP_MOMENTUM_NESTEROV = 4;
constexpr int GBP_MOMENTUM_CONVENTION = 5;

// adam: beta1, beta2, eps, convention, decoupled, one_minus_beta1, one_minus_beta2,
//   shrink, step_size, eps_hat.
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

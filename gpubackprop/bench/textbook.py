"""The tutorial's plain NumPy training loop: the baseline ``gpubackprop bench`` compares with.

A straightforward textbook MLP (ReLU hidden layers, softmax cross-entropy,
Adam or plain SGD), written the way a tutorial writes it: whole-array expressions that
allocate their results, the forward activations kept in a list, the
softmax and its gradient spelled out. It is kept float32 like the models it
is compared with, and skips the input-layer gradient as they do, so the
comparison measures the style of the code, not extra work.
"""

from __future__ import annotations

import numpy as np


class TextbookMLP:
    """A ReLU MLP trained by mini-batch backpropagation with Adam or SGD.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths, input first and classes last, e.g. ``(784, 512, 10)``.
    optimizer : {"adam", "sgd"}
    lr, beta1, beta2, eps : float
        The learning rate; Adam's other hyper-parameters.
    seed : int
        Seeds the He-normal initial weights and the shuffling.
    """

    def __init__(self, sizes, optimizer="adam", lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                 seed=0):
        self.update = self.adam if optimizer == "adam" else self.sgd
        self.rng = np.random.default_rng(seed)
        self.weights = [(self.rng.standard_normal((m, n)) * np.sqrt(2.0 / m)).astype(np.float32)
                        for m, n in zip(sizes[:-1], sizes[1:])]
        self.biases = [np.zeros(n, np.float32) for n in sizes[1:]]
        self.params = self.weights + self.biases
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.t = 0

    def forward(self, X):
        """Activations of every layer, input first; the last entry holds the logits."""
        activations = [X]
        for W, b in zip(self.weights[:-1], self.biases[:-1]):
            activations.append(np.maximum(0, activations[-1] @ W + b))
        activations.append(activations[-1] @ self.weights[-1] + self.biases[-1])
        return activations

    def train_epoch(self, X, y, batch_size):
        """One pass over ``X`` (N, D) float32 with labels ``y`` (N,) in shuffled batches."""
        n_classes = self.weights[-1].shape[1]
        order = self.rng.permutation(len(X))
        for start in range(0, len(X), batch_size):
            index = order[start:start + batch_size]
            xb, yb = X[index], y[index]
            activations = self.forward(xb)
            logits = activations[-1]
            exp = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = exp / exp.sum(axis=1, keepdims=True)
            targets = np.eye(n_classes, dtype=np.float32)[yb]
            delta = (probs - targets) / len(xb)
            grads_W, grads_b = [], []
            for i in reversed(range(len(self.weights))):
                grads_W.insert(0, activations[i].T @ delta)
                grads_b.insert(0, delta.sum(axis=0))
                if i > 0:
                    delta = (delta @ self.weights[i].T) * (activations[i] > 0)
            self.update(grads_W + grads_b)

    def adam(self, grads):
        """Kingma and Ba's update with bias-corrected moments."""
        self.t += 1
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m[:] = self.beta1 * m + (1 - self.beta1) * g
            v[:] = self.beta2 * v + (1 - self.beta2) * g ** 2
            m_hat = m / (1 - self.beta1 ** self.t)
            v_hat = v / (1 - self.beta2 ** self.t)
            p -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)

    def sgd(self, grads):
        """Plain gradient descent."""
        for p, g in zip(self.params, grads):
            p -= self.lr * g

    def predict(self, X):
        """Class labels (N,) for ``X`` (N, D)."""
        return self.forward(X)[-1].argmax(axis=1)

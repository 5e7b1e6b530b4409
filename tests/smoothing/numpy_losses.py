"""The smoothing losses recomputed in float64 numpy, as the objective tests' independent side."""

import numpy as np


def log_softmax(logits, axis=-1):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis, keepdims=True))


def info_nce(queries, keys, temperature=0.2):
    """Query i's positive is key i among the batch's keys (both L2-normalised), mean cross-entropy."""
    q = np.asarray(queries, np.float64)
    k = np.asarray(keys, np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    k = k / np.linalg.norm(k, axis=1, keepdims=True)
    return -np.mean(np.diag(log_softmax(q @ k.T / temperature)))


def consistency_loss(logits_MxBxC, labels_B, consistency_lambda, consistency_eta):
    """Mean cross-entropy over the m noisy copies + lambda mean KL(p_bar || p_i) + eta H(p_bar) (Jeong & Shin)."""
    log_p = log_softmax(logits_MxBxC)
    copies, batch, _ = log_p.shape
    cross_entropy = -np.mean(log_p[:, np.arange(batch), np.asarray(labels_B)])
    mean_p = np.exp(log_p).mean(0)
    kl = np.mean(np.sum(mean_p * (np.log(mean_p) - log_p), -1))
    entropy = -np.mean(np.sum(mean_p * np.log(mean_p), -1))
    return cross_entropy + consistency_lambda * kl + consistency_eta * entropy

"""One linear self-attention (LSA) layer exactly as in Zhang, Frei & Bartlett (ZFB).

The prompt is embedded as E ∈ R^{(d+1)x(M+1)}: column i is (xᵢ; yᵢ), the last column is (x_q; 0). The layer is
    f(E) = E + W^PV E (Eᵀ W^KQ E) / ρ,
with no softmax and no mask (the query column takes part in E Eᵀ), and the prediction is f(E)[d, M]
(0-based: label row, query column). ρ is the prompt's own number of context examples: N during training, M on a
test prompt of length M. That is the normalisation behind the closed form ŷ = x_qᵀ Γ⁻¹ (1/M) Σ yᵢ xᵢ at the
global minimum (`theory.predict_at_minimum`).

Only the last row of W^PV and the first d columns of W^KQ reach the prediction, so the forward pass computes
    ŷ = Σ_t (W^PV[d] · e_t) (e_tᵀ W^KQ e_q) / ρ,   e_t the columns of E, e_q the query column,
in O(B·M·d) without forming E Eᵀ or any (M+1)x(M+1) matrix.

Parameters are `w_kq` and `w_pv`, both (d+1)x(d+1) in this layout, so `theory.global_minimum` plugs in directly.
The reduced model of the paper (reduced=True) trains only u₋₁ = W^PV[d, d] and U₁₁ = W^KQ[:d, :d]: the other
entries are masked to zero in the forward pass, so they receive zero gradient and do not affect predictions.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def embed_prompts(xs_BxMxD, ys_BxM, x_query_BxD) -> jax.Array:
    """E as a batch of token-major matrices Eᵀ, shape (B, M+1, d+1): token t is column t of E."""
    context_BxMxD1 = jnp.concatenate([xs_BxMxD, ys_BxM[..., None]], axis=-1)
    query_Bx1xD1 = jnp.concatenate([x_query_BxD, jnp.zeros_like(x_query_BxD[:, :1])], axis=-1)[:, None, :]
    return jnp.concatenate([context_BxMxD1, query_Bx1xD1], axis=1)


def reduced_masks(dim: int, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    """(mask_kq, mask_pv): ones where the reduced model has trainable entries (U₁₁ and u₋₁), zeros elsewhere."""
    mask_kq = jnp.zeros((dim + 1, dim + 1), dtype).at[:dim, :dim].set(1.0)
    mask_pv = jnp.zeros((dim + 1, dim + 1), dtype).at[dim, dim].set(1.0)
    return mask_kq, mask_pv


def lsa_predict(w_kq, w_pv, xs_BxMxD, ys_BxM, x_query_BxD) -> jax.Array:
    """f(E)[d, M] for every prompt of a batch, ρ = M; a pure function of the two weight matrices."""
    n_context = xs_BxMxD.shape[1]
    tokens_BxTxD1 = embed_prompts(xs_BxMxD, ys_BxM, x_query_BxD)
    query_token_BxD1 = tokens_BxTxD1[:, -1, :]
    keyed_query_BxD1 = jnp.einsum("ij,bj->bi", w_kq, query_token_BxD1)  # (W^KQ E)[:, M]
    attention_BxT = jnp.einsum("bti,bi->bt", tokens_BxTxD1, keyed_query_BxD1)  # (Eᵀ W^KQ E)[:, M]
    label_values_BxT = jnp.einsum("i,bti->bt", w_pv[-1], tokens_BxTxD1)  # (W^PV E)[d, :]
    residual_B = query_token_BxD1[:, -1]  # E[d, M], the label placeholder (zero)
    return residual_B + jnp.einsum("bt,bt->b", label_values_BxT, attention_BxT) / n_context


def balanced_initializers(init_scale: float):
    """ZFB Assumption 3.3: W^PV(0) = σ [[0,0],[0,1]], W^KQ(0) = σ [[ΘΘᵀ,0],[0,0]], ΘΘᵀ = MMᵀ/||MMᵀ||_F, M Gaussian.

    Balanced (σ on both factors, ||ΘΘᵀ||_F = 1) so that gradient flow keeps u₋₁² = ||U₁₁||_F², and ΘΘᵀ is
    positive semi-definite so that the flow starts in the basin of the global minimum.
    """

    def init_kq(key, shape, dtype=jnp.float32):
        dim = shape[0] - 1
        gaussian_DxD = jax.random.normal(key, (dim, dim), dtype)
        gram_DxD = gaussian_DxD @ gaussian_DxD.T
        gram_DxD = gram_DxD / jnp.linalg.norm(gram_DxD)
        return jnp.zeros(shape, dtype).at[:dim, :dim].set(init_scale * gram_DxD)

    def init_pv(key, shape, dtype=jnp.float32):
        del key
        return jnp.zeros(shape, dtype).at[-1, -1].set(init_scale)

    return init_kq, init_pv


class LinearSelfAttention(nn.Module):
    """ZFB's single LSA layer; `apply(params, xs_BxMxD, ys_BxM, x_query_BxD)` returns ŷ_B.

    dim: covariate dimension d. reduced: train only u₋₁ and U₁₁ (the paper's model) instead of all entries.
    init_scale: σ of the initialisation; ZFB's convergence guarantee needs σ² ||Γ||_op √d < 2.
    """

    dim: int
    reduced: bool = False
    init_scale: float = 0.1
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, xs_BxMxD, ys_BxM, x_query_BxD):
        if xs_BxMxD.shape[-1] != self.dim:
            raise ValueError(f"xs_BxMxD must have last dimension dim={self.dim}, got shape {xs_BxMxD.shape}")
        init_kq, init_pv = balanced_initializers(self.init_scale)
        shape = (self.dim + 1, self.dim + 1)
        w_kq = self.param("w_kq", init_kq, shape, self.param_dtype)
        w_pv = self.param("w_pv", init_pv, shape, self.param_dtype)
        if self.reduced:
            mask_kq, mask_pv = reduced_masks(self.dim, self.param_dtype)
            w_kq, w_pv = w_kq * mask_kq, w_pv * mask_pv
        return lsa_predict(w_kq, w_pv, xs_BxMxD, ys_BxM, x_query_BxD)


def params_from_weights(w_kq, w_pv) -> dict:
    """The variables dict for `LinearSelfAttention.apply` holding the given weights (e.g. theory.global_minimum)."""
    return {"params": {"w_kq": jnp.asarray(w_kq), "w_pv": jnp.asarray(w_pv)}}


def squared_loss(predictions_B, targets_B) -> jax.Array:
    """ZFB's loss 1/(2B) Σ (ŷ − <w, x_q>)²."""
    return 0.5 * jnp.mean((predictions_B - targets_B) ** 2)


def prompt_loss(model: LinearSelfAttention, variables, prompts) -> jax.Array:
    """`squared_loss` of the model on a `tasks.Prompts` batch, against the noiseless target <w, x_q>."""
    predictions_B = model.apply(variables, prompts.xs_BxMxD, prompts.ys_BxM, prompts.x_query_BxD)
    return squared_loss(predictions_B, prompts.target_B)

"""A GPT-2-style causal transformer backbone in Flax Linen (Radford et al., 2019; HuggingFace `GPT2Model`).

The backbone takes input embeddings (no token embedding: callers bring their own read-in, as Garg et al.'s
in-context regression model does) and returns the hidden states after the final LayerNorm:

  h = inputs + wpe[0:T]                                   learned absolute positions, T <= n_positions
  h = h + c_proj(causal_attention(c_attn(LN(h))))         per block, pre-LN
  h = h + c_proj(gelu_tanh(c_fc(LN(h))))                  MLP of width 4 n_embd, GELU with the tanh approximation
  out = LN_f(h)                                           (GPT-2's "gelu_new")

Parameter names follow HuggingFace's GPT-2 so weights map one to one: wpe/embedding, block_<i>/{ln_1,
attn/{c_attn, c_proj}, ln_2, mlp/{c_fc, c_proj}}, ln_f. Dense kernels are (in, out), the layout of HF's Conv1D.
q|k|v are fused in c_attn (n_embd -> 3 n_embd) with the heads contiguous inside each of q, k, v. Attention is written
as einsums in the head-major layout (B, heads, T, head_dim): the projections produce and consume that layout
directly, so XLA needs no transposed copies of q, k, v or of the attention output (on the 2-core CPU this made GPT-2
standard training ~8-18% faster than `jax.nn.dot_product_attention` on (B, T, heads, head_dim) inputs).

`output_positions` (a static slice) returns the hidden states at those positions only; the last block then computes
its queries, MLP and final LayerNorm only there (Garg's read-out uses every other token, which saves ~5/12 of that
block's work). `params_from_huggingface_gpt2` maps a transformers GPT2Model state dict onto these parameters.

Initialisation is GPT-2's: every kernel and the position embedding N(0, 0.02²), biases zero, LayerNorm scale one;
the two residual projections (attn/c_proj, mlp/c_proj) use std 0.02 / sqrt(2 n_layer) so that the residual stream's
variance does not grow with depth.

`dtype` is the compute dtype (e.g. jnp.bfloat16 for bf16 matmuls); parameters stay in `param_dtype` (float32), and
LayerNorm statistics, the attention softmax and the output are computed in float32. Dropout (0 by default, as in
Garg et al.) applies to the embeddings and to the residual branches; attention-probability dropout is not implemented.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from robust_jax.core import checks

Dtype = Any

INIT_STD = 0.02
LAYER_NORM_EPSILON = 1e-5


def gelu_tanh(x):
    """GELU with the tanh approximation (GPT-2's "gelu_new")."""
    return jax.nn.gelu(x, approximate=True)


class _HeadsDense(nn.Module):
    """A Dense layer's parameters (kernel (in, out), bias (out,)) applied in head layouts with einsum, so that
    attention needs no transposed copies: "in" mode maps (B, T, E) to q, k, v of shape (B, N, T, H); "out" maps
    (B, N, Q, H) back to (B, Q, E)."""

    features: int
    n_head: int
    init_std: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mode: str):
        width = x.shape[-1] if mode == "in" else x.shape[1] * x.shape[3]
        kernel = self.param("kernel", nn.initializers.normal(self.init_std), (width, self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        kernel, bias, x = kernel.astype(self.dtype), bias.astype(self.dtype), x.astype(self.dtype)
        if mode == "in":  # features = 3E: q | k | v, heads contiguous inside each
            head_dim = width // self.n_head
            kernel_Ex3xNxH = kernel.reshape(width, 3, self.n_head, head_dim)
            qkv_3xBxNxTxH = jnp.einsum("bte,ecnh->cbnth", x, kernel_Ex3xNxH)
            return qkv_3xBxNxTxH + bias.reshape(3, 1, self.n_head, 1, head_dim)
        head_dim = x.shape[3]
        kernel_NxHxE = kernel.reshape(self.n_head, head_dim, self.features)
        return jnp.einsum("bnqh,nhe->bqe", x, kernel_NxHxE) + bias


class CausalSelfAttention(nn.Module):
    n_head: int
    residual_init_std: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxTxE: jax.Array, query_positions: slice | None = None) -> jax.Array:
        """Attention outputs at every position, or only at `query_positions` (keys and values stay all T)."""
        batch, tokens, width = x_BxTxE.shape
        head_dim = width // self.n_head
        q_BxNxTxH, k_BxNxTxH, v_BxNxTxH = _HeadsDense(3 * width, self.n_head, INIT_STD, self.dtype, self.param_dtype,
                                                       name="c_attn")(x_BxTxE, "in")
        positions_Q = np.arange(tokens) if query_positions is None else np.arange(tokens)[query_positions]
        if query_positions is not None:
            q_BxNxTxH = q_BxNxTxH[:, :, query_positions]
        causal_QxT = positions_Q[:, None] >= np.arange(tokens)[None, :]
        scores = jnp.einsum("bnqh,bnkh->bnqk", q_BxNxTxH, k_BxNxTxH).astype(jnp.float32) * head_dim**-0.5
        scores = jnp.where(causal_QxT, scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(v_BxNxTxH.dtype)
        out_BxNxQxH = jnp.einsum("bnqk,bnkh->bnqh", weights, v_BxNxTxH)
        return _HeadsDense(width, self.n_head, self.residual_init_std, self.dtype, self.param_dtype,
                           name="c_proj")(out_BxNxQxH, "out")


class Mlp(nn.Module):
    residual_init_std: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxTxE: jax.Array) -> jax.Array:
        width = x_BxTxE.shape[-1]
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
        h_BxTxF = gelu_tanh(dense(4 * width, kernel_init=nn.initializers.normal(INIT_STD), name="c_fc")(x_BxTxE))
        return dense(width, kernel_init=nn.initializers.normal(self.residual_init_std), name="c_proj")(h_BxTxF)


class Block(nn.Module):
    n_head: int
    residual_init_std: float
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h_BxTxE: jax.Array, train: bool, query_positions: slice | None = None) -> jax.Array:
        layer_norm = functools.partial(nn.LayerNorm, epsilon=LAYER_NORM_EPSILON, dtype=jnp.float32,
                                       param_dtype=self.param_dtype)
        dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
        attention = CausalSelfAttention(self.n_head, self.residual_init_std, self.dtype, self.param_dtype,
                                        name="attn")
        mlp = Mlp(self.residual_init_std, self.dtype, self.param_dtype, name="mlp")
        # The residual stream stays float32; only the branches compute in `dtype`.
        attended_BxQxE = attention(layer_norm(name="ln_1")(h_BxTxE), query_positions)
        if query_positions is not None:
            h_BxTxE = h_BxTxE[:, query_positions]
        h_BxQxE = h_BxTxE + dropout(attended_BxQxE.astype(jnp.float32))
        return h_BxQxE + dropout(mlp(layer_norm(name="ln_2")(h_BxQxE)).astype(jnp.float32))


class CausalTransformer(nn.Module):
    """GPT-2 backbone: (batch, T, n_embd) input embeddings -> (batch, T, n_embd) float32 hidden states, T <= n_positions."""

    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        for name in ("n_positions", "n_embd", "n_layer", "n_head"):
            checks.check_int(f"CausalTransformer.{name}", getattr(self, name), minimum=1)
        if self.n_embd % self.n_head:
            raise ValueError(
                f"CausalTransformer.n_embd must be divisible by n_head, got n_embd={self.n_embd}, n_head={self.n_head}"
            )
        if not (0.0 <= self.dropout_rate < 1.0):
            raise ValueError(f"CausalTransformer.dropout_rate must be in [0, 1), got {self.dropout_rate}")
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs_embeds_BxTxE: jax.Array, train: bool = False,
                 output_positions: slice | None = None) -> jax.Array:
        """Hidden states at every position, or only at `output_positions` (a static slice, e.g. slice(0, None, 2)).

        Selecting outputs equals slicing the full output, but the last block then computes its queries, MLP and the
        final LayerNorm only at those positions, which saves work when a caller reads out a subset.
        """
        tokens, width = inputs_embeds_BxTxE.shape[-2:]
        if width != self.n_embd:
            raise ValueError(f"inputs_embeds last axis must be n_embd={self.n_embd}, got {width}")
        if tokens > self.n_positions:
            raise ValueError(f"sequence length {tokens} exceeds n_positions={self.n_positions}")
        wpe = nn.Embed(self.n_positions, self.n_embd, embedding_init=nn.initializers.normal(INIT_STD),
                       param_dtype=self.param_dtype, name="wpe")
        h_BxTxE = inputs_embeds_BxTxE.astype(jnp.float32) + wpe.embedding[:tokens].astype(jnp.float32)
        h_BxTxE = nn.Dropout(self.dropout_rate, deterministic=not train)(h_BxTxE)
        residual_init_std = INIT_STD / math.sqrt(2 * self.n_layer)
        for layer in range(self.n_layer):
            last = layer == self.n_layer - 1
            h_BxTxE = Block(self.n_head, residual_init_std, self.dropout_rate, self.dtype, self.param_dtype,
                            name=f"block_{layer}")(h_BxTxE, train, output_positions if last else None)
        return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=jnp.float32, param_dtype=self.param_dtype,
                            name="ln_f")(h_BxTxE)


def params_from_huggingface_gpt2(state_dict, n_layer: int) -> dict:
    """Flax params of `CausalTransformer` from a HuggingFace GPT2Model state dict (name -> array-like).

    HF's Conv1D weights are already (in, out), so kernels copy without a transpose. The token embedding wte is
    not used (the backbone takes input embeddings).
    """
    def array(name):
        value = state_dict[name]
        value = value.detach().cpu().numpy() if hasattr(value, "detach") else value
        return jnp.asarray(value, dtype=jnp.float32)

    def dense(prefix):
        return {"kernel": array(f"{prefix}.weight"), "bias": array(f"{prefix}.bias")}

    def layer_norm(prefix):
        return {"scale": array(f"{prefix}.weight"), "bias": array(f"{prefix}.bias")}

    params = {"wpe": {"embedding": array("wpe.weight")}, "ln_f": layer_norm("ln_f")}
    for layer in range(n_layer):
        prefix = f"h.{layer}"
        params[f"block_{layer}"] = {
            "ln_1": layer_norm(f"{prefix}.ln_1"),
            "attn": {"c_attn": dense(f"{prefix}.attn.c_attn"), "c_proj": dense(f"{prefix}.attn.c_proj")},
            "ln_2": layer_norm(f"{prefix}.ln_2"),
            "mlp": {"c_fc": dense(f"{prefix}.mlp.c_fc"), "c_proj": dense(f"{prefix}.mlp.c_proj")},
        }
    return {"params": params}

"""Low-rank adapters (LoRA) on any Flax model's dense kernels, without touching the model's code.

LoRA keeps a base kernel W frozen and learns a low-rank update: the adapted kernel is

    W' = W + (alpha / rank) * A @ B,     A: (in, rank),  B: (rank, out)

with A random and B = 0 at initialisation, so the adapted model starts out exactly equal to the base model
(W + 0 == W bitwise). Everything here is functional: the adapters live in their own pytree and are folded into the
base parameters inside the jitted forward pass::

    lora_params = lora_init(variables, r".*visual.*attn/in_proj", rank=8, alpha=8, key=key)
    def forward(lora_params, variables, images):
        return model.apply(apply_lora(variables, lora_params), images, method=model.encode_image)

The adapter tree mirrors the base tree, holding a `LoraAdapter` (a, b; alpha and the axis split static) at the path
of each adapted kernel and nothing else, e.g. {'params': {'visual': {... {'in_proj': {'kernel': LoraAdapter}}}}}.

Kernel layouts. A Flax `Dense` kernel is (in, out). A `DenseGeneral` (or `Conv`) kernel of rank k is
(*in_axes, *out_axes): its first `num_in_axes` axes are contracted with the input and the rest index the output.
That split cannot be read off the shape, so it is a parameter: `num_in_axes=1` (the default) suits Dense, a
DenseGeneral query/key/value projection (D -> H x K, kernel (D, H, K)) and a Conv kernel read as
(kh, kw, cin | cout) needs `num_in_axes=3`; an attention output projection (H x K -> D, kernel (H, K, D)) needs
`num_in_axes=2`. It may also be a function (path, shape) -> int. The kernel is reshaped to
(prod(in_axes), prod(out_axes)), updated, and reshaped back, so A is (prod(in_axes), rank) and B (rank, prod(out_axes)).

Freezing: train a tree such as {'base': variables, 'lora': lora_params, 'head': head_params} with
`freeze_optimizer(optax.adamw(...), trainable_mask(tree, [r'^lora/', r'^head/']))`: frozen leaves get
`optax.set_to_zero()` (no update, no optimiser state, no weight decay) through `optax.multi_transform`.

LoRA dropout is not implemented (the Omniview-Tuning recipe uses dropout 0).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any

TRAINABLE_LABEL = "trainable"
FROZEN_LABEL = "frozen"


@flax.struct.dataclass
class LoraAdapter:
    """One adapter: `a` (in, rank), `b` (rank, out); `alpha` and `num_in_axes` are static (not trained)."""

    a: jax.Array
    b: jax.Array
    alpha: float = flax.struct.field(pytree_node=False, default=1.0)
    num_in_axes: int = flax.struct.field(pytree_node=False, default=1)

    @property
    def rank(self) -> int:
        return self.a.shape[-1]

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def delta(self, kernel_shape: Sequence[int]) -> jax.Array:
        """(alpha / rank) * A @ B, reshaped to the kernel's shape."""
        return (self.scaling * (self.a @ self.b)).reshape(kernel_shape)


def path_string(path: Sequence[Any]) -> str:
    """'params/visual/transformer/resblocks_0/attn/in_proj/kernel' for a jax key path."""
    parts = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            parts.append(str(entry.key))
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            parts.append(str(entry.name))
        elif isinstance(entry, jax.tree_util.SequenceKey):
            parts.append(str(entry.idx))
        elif isinstance(entry, jax.tree_util.FlattenedIndexKey):
            parts.append(str(entry.key))
        else:
            parts.append(str(entry))
    return "/".join(parts)


def _flat_dict(tree: PyTree) -> dict[str, Any]:
    return {path_string(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _set_path(tree: dict, keys: Sequence[str], value: Any) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


def _nested_dict_items(tree: Any, prefix: tuple = ()) -> Iterable[tuple[tuple, Any]]:
    """(key tuple, leaf) of a nested dict, where LoraAdapter counts as a leaf."""
    if isinstance(tree, LoraAdapter) or not hasattr(tree, "items"):
        yield prefix, tree
        return
    for key, value in tree.items():
        yield from _nested_dict_items(value, prefix + (key,))


def matching_kernels(params: PyTree, pattern: str, leaf_names: Sequence[str] = ("kernel",)) -> list[str]:
    """Paths of the kernels LoRA would adapt: leaves named in `leaf_names`, of rank >= 2, whose full path
    ('params/.../in_proj/kernel') `re.search`-matches `pattern`."""
    regex = re.compile(pattern)
    found = []
    for path, leaf in _flat_dict(params).items():
        if path.rsplit("/", 1)[-1] in leaf_names and np.ndim(leaf) >= 2 and regex.search(path):
            found.append(path)
    return found


def lora_init(params: PyTree, pattern: str, rank: int, alpha: float, key: jax.Array, *,
              num_in_axes: int | Callable[[str, tuple], int] = 1,
              leaf_names: Sequence[str] = ("kernel",)) -> dict:
    """Adapters for every kernel whose path matches `pattern` (a regex, `re.search` on paths such as
    'params/visual/transformer/resblocks_0/attn/in_proj/kernel').

    A ~ U(-1/sqrt(in), 1/sqrt(in)) (PyTorch/PEFT's Kaiming-uniform with a=sqrt(5)), B = 0, both in the kernel's dtype.
    Raises ValueError if nothing matches, or for a bad rank/alpha/axis split.
    """
    if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or rank <= 0:
        raise ValueError(f"rank={rank!r} must be a positive integer")
    if not (isinstance(alpha, (int, float, np.floating)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha={alpha!r} must be a positive finite number")
    paths = matching_kernels(params, pattern, leaf_names)
    if not paths:
        candidates = [p for p, leaf in _flat_dict(params).items()
                      if p.rsplit("/", 1)[-1] in leaf_names and np.ndim(leaf) >= 2]
        shown = ", ".join(candidates[:8]) + (", ..." if len(candidates) > 8 else "")
        raise ValueError(f"pattern={pattern!r} matches no kernel (leaves named {tuple(leaf_names)} of rank >= 2); "
                         f"{len(candidates)} candidates, e.g. {shown or 'none'}")
    flat = _flat_dict(params)
    adapters: dict = {}
    for index, path in enumerate(paths):
        kernel = flat[path]
        shape = tuple(kernel.shape)
        split = num_in_axes(path, shape) if callable(num_in_axes) else num_in_axes
        if not isinstance(split, (int, np.integer)) or not 1 <= split < len(shape):
            raise ValueError(f"num_in_axes={split!r} for kernel {path} of shape {shape}: must be an integer in "
                             f"[1, {len(shape) - 1}] (the leading axes contracted with the input)")
        fan_in, fan_out = math.prod(shape[:split]), math.prod(shape[split:])
        if rank > min(fan_in, fan_out):
            raise ValueError(f"rank={rank} exceeds min(in, out)={min(fan_in, fan_out)} for kernel {path} of shape "
                             f"{shape} (in={fan_in}, out={fan_out})")
        bound = 1.0 / math.sqrt(fan_in)
        a = jax.random.uniform(jax.random.fold_in(key, index), (fan_in, rank), kernel.dtype, -bound, bound)
        b = jnp.zeros((rank, fan_out), kernel.dtype)
        _set_path(adapters, path.split("/"), LoraAdapter(a=a, b=b, alpha=float(alpha), num_in_axes=int(split)))
    return adapters


def _map_adapted(params: PyTree, lora_params: dict, combine: Callable[[jax.Array, LoraAdapter], jax.Array]) -> PyTree:
    adapters = {"/".join(map(str, keys)): adapter for keys, adapter in _nested_dict_items(lora_params)}
    if not all(isinstance(adapter, LoraAdapter) for adapter in adapters.values()):
        bad = [p for p, v in adapters.items() if not isinstance(v, LoraAdapter)]
        raise ValueError(f"lora_params has non-adapter leaves at {bad[:4]}; build it with lora_init")
    seen = set()

    def visit(path, leaf):
        name = path_string(path)
        adapter = adapters.get(name)
        if adapter is None:
            return leaf
        seen.add(name)
        return combine(leaf, adapter)

    out = jax.tree_util.tree_map_with_path(visit, params)
    missing = sorted(set(adapters) - seen)
    if missing:
        raise ValueError(f"lora_params adapts kernels that params does not have: {missing[:4]}")
    return out


def apply_lora(params: PyTree, lora_params: dict) -> PyTree:
    """Params with every adapted kernel replaced by W + (alpha/rank) A@B; call it inside the jitted forward so
    gradients reach A and B. Kernels keep their dtype."""
    return _map_adapted(params, lora_params, lambda w, ad: w + ad.delta(w.shape).astype(w.dtype))


@jax.jit
def merge(params: PyTree, lora_params: dict) -> PyTree:
    """Folds the adapters into the base kernels (for serving: no adapter cost at inference). Jitted: one compile
    per tree structure instead of one per eager op."""
    return apply_lora(params, lora_params)


@jax.jit
def unmerge(merged_params: PyTree, lora_params: dict) -> PyTree:
    """Inverse of `merge`: subtracts the adapters again (equal to the base up to float rounding)."""
    return _map_adapted(merged_params, lora_params, lambda w, ad: w - ad.delta(w.shape).astype(w.dtype))


def num_lora_parameters(lora_params: dict) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(lora_params)))


def trainable_mask(tree: PyTree, trainable_patterns: str | Sequence[str]) -> PyTree:
    """A bool tree shaped like `tree`: True where the leaf's path ('lora/params/.../kernel/a') `re.search`-matches
    any of `trainable_patterns`. Raises ValueError if a pattern matches nothing (a typo would silently freeze)."""
    patterns = [trainable_patterns] if isinstance(trainable_patterns, str) else list(trainable_patterns)
    if not patterns:
        raise ValueError("trainable_patterns is empty; give at least one regex")
    regexes = [re.compile(p) for p in patterns]
    paths = [path_string(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]
    for pattern, regex in zip(patterns, regexes):
        if not any(regex.search(path) for path in paths):
            raise ValueError(f"trainable pattern {pattern!r} matches no leaf; leaf paths look like {paths[:4]}")
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(regex.search(path_string(path)) for regex in regexes), tree)


def freeze_optimizer(optimizer: optax.GradientTransformation, mask: PyTree) -> optax.GradientTransformation:
    """`optimizer` on leaves where `mask` is True, `optax.set_to_zero()` (frozen) elsewhere."""
    labels = jax.tree.map(lambda trainable: TRAINABLE_LABEL if trainable else FROZEN_LABEL, mask)
    return optax.multi_transform({TRAINABLE_LABEL: optimizer, FROZEN_LABEL: optax.set_to_zero()}, labels)

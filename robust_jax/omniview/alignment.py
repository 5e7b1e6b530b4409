"""Omniview-Tuning's minimax cross-view alignment: the max step (object centres and hard views, once per epoch) and
the viewpoint-invariance loss L_VI of the min step (every batch).

Layout. An object's views live in a padded array: embeddings_OxVxE with valid_OxV marking real views (padding may
sit anywhere; `robust_jax.data.mvcap.group_views` puts it at the end). The per-object maths is written for one object
and vmapped over objects, so each object costs V x V, never (O*V) x (O*V). Functions that take embeddings also take a
single object, (V, E) with valid (V,), and then return per-object results without the leading axis.

Maths (Ruan et al. 2024, section 3): with z the L2-normalised embeddings of an object's views,
    s_i = mean cosine similarity of view i to its `num_neighbours` most similar other views of the object,
    w_i = (1 / s_i) / sum_j (1 / s_j),      c = sum_i w_i z_i   (not re-normalised),
    hard set = the K views with the lowest cos(z_i, c),
    L_VI = mean over the batch's hard views of max(0, 1 - cos(z, c) + margin), centres held fixed.
Down-weighting views that sit in a dense cluster moves the centre towards the rarer viewpoints. The weights assume
positive mean similarities (true of CLIP embeddings of one object); s_i <= 0 gives negative or unbounded weights,
as the formula does.

Argument checks run once per call in Python; a mask that is traced (inside the caller's jit) skips the per-object
view-count checks, which then are the caller's job.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from robust_jax.core import mesh as mesh_lib
from robust_jax.core.evaluate import padded_batches
from robust_jax.data.mvcap import group_views
from robust_jax.models.clip import l2_normalize

DEFAULT_NUM_NEIGHBOURS = 5
DEFAULT_NUM_HARD_VIEWS = 5
DEFAULT_MARGIN = 0.3
DEFAULT_MAX_VIEWS_PER_OBJECT = 100


# ------------------------------------------------------------------------------------------------ argument checks


def _is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return int(value)


def _as_objects(embeddings, valid) -> tuple[jax.Array, jax.Array, bool]:
    """(embeddings_OxVxE, valid_OxV, was_single_object); a single object (V, E) gains a leading axis."""
    embeddings = jnp.asarray(embeddings)
    if embeddings.ndim not in (2, 3):
        raise ValueError(f"embeddings have shape {tuple(embeddings.shape)}; expected (views, embed_dim) for one "
                         "object or (objects, views, embed_dim)")
    if not jnp.issubdtype(embeddings.dtype, jnp.floating):
        raise ValueError(f"embeddings have dtype {embeddings.dtype}; expected floating point")
    if valid is None:
        valid = jnp.ones(embeddings.shape[:-1], bool)
    valid = jnp.asarray(valid)
    if valid.shape != embeddings.shape[:-1] or valid.dtype != jnp.bool_:
        raise ValueError(f"valid has shape {tuple(valid.shape)} and dtype {valid.dtype}; expected bool of shape "
                         f"{tuple(embeddings.shape[:-1])} (the embeddings' shape without embed_dim)")
    single = embeddings.ndim == 2
    if single:
        embeddings, valid = embeddings[None], valid[None]
    return embeddings, valid, single


def _check_views_per_object(valid_OxV, needed: int, what: str) -> None:
    """Every object must have at least `needed` valid views (checked when the mask is concrete)."""
    if _is_traced(valid_OxV):
        return
    counts_O = np.asarray(valid_OxV).sum(axis=1)
    short = np.flatnonzero(counts_O < needed)
    if short.size:
        o = int(short[0])
        raise ValueError(f"{what} needs at least {needed} views per object; object {o} has {int(counts_O[o])} "
                         f"({short.size} of {counts_O.size} objects have fewer than {needed})")


def _check_neighbour_count(valid_OxV, num_neighbours: int) -> None:
    what = f"num_neighbours={num_neighbours} (the view itself excluded)"
    _check_views_per_object(valid_OxV, num_neighbours + 1, what)


def _check_margin(margin) -> None:
    if _is_traced(margin):
        return
    if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin={margin!r} must be a finite number >= 0 (the paper uses 0.3)")


# ------------------------------------------------------------------------------------------ per-object max step


def _object_centre_weights(z_VxE: jax.Array, valid_V: jax.Array, num_neighbours: int) -> jax.Array:
    """One object's weights w_V (unit-norm z); 0 on padding."""
    num_views = z_VxE.shape[0]
    similarity_VxV = z_VxE @ z_VxE.T
    is_neighbour_VxV = valid_V[None, :] & ~jnp.eye(num_views, dtype=bool)
    nearest_VxN, _ = jax.lax.top_k(jnp.where(is_neighbour_VxV, similarity_VxV, -jnp.inf), num_neighbours)
    mean_similarity_V = jnp.where(valid_V, nearest_VxN.mean(axis=-1), 1.0)
    inverse_V = jnp.where(valid_V, 1.0 / mean_similarity_V, 0.0)
    return inverse_V / inverse_V.sum()


def _object_hard_views(z_VxE: jax.Array, centre_E: jax.Array, valid_V: jax.Array, num_hard: int):
    """Positions of the `num_hard` valid views least similar to the centre (hardest first), and their V mask."""
    cosine_V = z_VxE @ l2_normalize(centre_E)
    _, hard_K = jax.lax.top_k(jnp.where(valid_V, -cosine_V, -jnp.inf), num_hard)  # ties: lower position first
    is_hard_V = jnp.zeros(valid_V.shape, bool).at[hard_K].set(True)
    return hard_K.astype(jnp.int32), is_hard_V


@functools.partial(jax.jit, static_argnames=("num_neighbours",))
def _centre_weights_OxV(embeddings_OxVxE, valid_OxV, num_neighbours):
    z_OxVxE = l2_normalize(embeddings_OxVxE.astype(jnp.float32))
    return jax.vmap(_object_centre_weights, in_axes=(0, 0, None))(z_OxVxE, valid_OxV, num_neighbours)


@functools.partial(jax.jit, static_argnames=("num_neighbours",))
def _centres_OxE(embeddings_OxVxE, valid_OxV, num_neighbours):
    z_OxVxE = l2_normalize(embeddings_OxVxE.astype(jnp.float32))
    weights_OxV = jax.vmap(_object_centre_weights, in_axes=(0, 0, None))(z_OxVxE, valid_OxV, num_neighbours)
    return jnp.einsum("ov,ove->oe", weights_OxV, z_OxVxE)


@functools.partial(jax.jit, static_argnames=("num_hard",))
def _hard_views_OxK(embeddings_OxVxE, centres_OxE, valid_OxV, num_hard):
    z_OxVxE = l2_normalize(embeddings_OxVxE.astype(jnp.float32))
    return jax.vmap(_object_hard_views, in_axes=(0, 0, 0, None))(
        z_OxVxE, centres_OxE.astype(jnp.float32), valid_OxV, num_hard)


@functools.partial(jax.jit, static_argnames=("num_neighbours", "num_hard"))
def _centres_and_hard_views(embeddings_OxVxE, valid_OxV, num_neighbours, num_hard):
    centres_OxE = _centres_OxE(embeddings_OxVxE, valid_OxV, num_neighbours)
    hard_OxK, is_hard_OxV = _hard_views_OxK(embeddings_OxVxE, centres_OxE, valid_OxV, num_hard)
    return centres_OxE, hard_OxK, is_hard_OxV


def centre_weights(embeddings, valid=None, *, num_neighbours: int = DEFAULT_NUM_NEIGHBOURS) -> jax.Array:
    """Per-view centre weights: (V, E) -> (V,), or (O, V, E) with valid (O, V) -> (O, V). Each object's weights
    sum to 1 over its valid views and are 0 on padding. Needs more than `num_neighbours` views per object."""
    embeddings_OxVxE, valid_OxV, single = _as_objects(embeddings, valid)
    num_neighbours = _check_count("num_neighbours", num_neighbours)
    _check_neighbour_count(valid_OxV, num_neighbours)
    weights_OxV = _centre_weights_OxV(embeddings_OxVxE, valid_OxV, num_neighbours)
    return weights_OxV[0] if single else weights_OxV


def object_centres(embeddings, valid=None, *, num_neighbours: int = DEFAULT_NUM_NEIGHBOURS) -> jax.Array:
    """Object centres c = sum_i w_i z_i over unit-norm view embeddings z_i (not re-normalised):
    (V, E) -> (E,), or (O, V, E) with valid (O, V) -> (O, E)."""
    embeddings_OxVxE, valid_OxV, single = _as_objects(embeddings, valid)
    num_neighbours = _check_count("num_neighbours", num_neighbours)
    _check_neighbour_count(valid_OxV, num_neighbours)
    centres_OxE = _centres_OxE(embeddings_OxVxE, valid_OxV, num_neighbours)
    return centres_OxE[0] if single else centres_OxE


def hard_views(embeddings, centres, num_hard: int = DEFAULT_NUM_HARD_VIEWS, valid=None
               ) -> tuple[jax.Array, jax.Array]:
    """The `num_hard` valid views per object with the lowest cos(z, c), hardest first.

    (O, V, E), centres (O, E), valid (O, V) -> (view positions (O, K) int32, membership mask (O, V) bool);
    a single object (V, E), centre (E,) gives (K,) and (V,). Padding views are never chosen.
    """
    embeddings_OxVxE, valid_OxV, single = _as_objects(embeddings, valid)
    centres_OxE = jnp.asarray(centres)
    if single:
        centres_OxE = centres_OxE[None]
    expected = (embeddings_OxVxE.shape[0], embeddings_OxVxE.shape[2])
    if centres_OxE.shape != expected:
        raise ValueError(f"centres have shape {tuple(jnp.shape(centres))}; expected "
                         f"{expected[1:] if single else expected} (one centre per object)")
    num_hard = _check_count("num_hard", num_hard)
    _check_views_per_object(valid_OxV, num_hard, f"num_hard={num_hard}")
    hard_OxK, is_hard_OxV = _hard_views_OxK(embeddings_OxVxE, centres_OxE, valid_OxV, num_hard)
    return (hard_OxK[0], is_hard_OxV[0]) if single else (hard_OxK, is_hard_OxV)


# ------------------------------------------------------------------------------------------- max step, whole data


@dataclasses.dataclass(frozen=True)
class AlignmentTargets:
    """What the max step fixes for an epoch, as host arrays.

    centres_OxE: object centres; hard_rows_OxK: dataset rows of each object's hard views (hardest first);
    object_index_N: each dataset row's object (-1 for a view beyond max_views_per_object, which is in no group);
    is_hard_N: whether each dataset row is in its object's hard set.
    """

    object_ids: list
    centres_OxE: np.ndarray
    hard_rows_OxK: np.ndarray
    object_index_N: np.ndarray
    is_hard_N: np.ndarray

    def for_rows(self, rows_B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(centres_BxE, is_hard_B) for a batch's dataset rows; a row of -1 (an image outside the multi-view set,
        e.g. a 2D image-caption pair mixed into the batch) or an ungrouped view gets a zero centre and is not hard."""
        rows_B = np.asarray(rows_B)
        in_set_B = rows_B >= 0
        objects_B = np.where(in_set_B, self.object_index_N[np.where(in_set_B, rows_B, 0)], -1)
        grouped_B = objects_B >= 0
        centres_BxE = np.where(grouped_B[:, None], self.centres_OxE[np.maximum(objects_B, 0)], 0.0)
        is_hard_B = grouped_B & self.is_hard_N[np.where(in_set_B, rows_B, 0)]
        return centres_BxE.astype(np.float32), is_hard_B


class _RowSubset:
    """images[rows[i]] for i in a batch, without materialising the subset (images may load lazily)."""

    def __init__(self, images, rows: np.ndarray):
        self.images, self.rows = images, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> np.ndarray:
        return np.asarray(self.images[self.rows[index]])


class _GroupedEmbeddings:
    """embeddings_OxVxE for a batch of objects, gathered on the host from the per-view embeddings."""

    def __init__(self, embeddings_NxE: np.ndarray, position_OxV: np.ndarray, valid_OxV: np.ndarray):
        self.embeddings_NxE, self.position_OxV, self.valid_OxV = embeddings_NxE, position_OxV, valid_OxV

    def __len__(self) -> int:
        return len(self.position_OxV)

    def __getitem__(self, objects) -> np.ndarray:
        gathered = self.embeddings_NxE[self.position_OxV[objects]]
        return np.where(self.valid_OxV[objects][..., None], gathered, 0.0).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("embed_fn",))
def _embed_batch(embed_fn: Callable, params: Any, images_BxHxWxC: jax.Array) -> jax.Array:
    return l2_normalize(embed_fn(params, images_BxHxWxC).astype(jnp.float32))


def _gather_rows(x_BxD: jax.Array, mask_B: jax.Array) -> np.ndarray:
    """A global batch on the host (every process gets all of it), padding rows dropped."""
    rows = np.asarray(multihost_utils.process_allgather(x_BxD, tiled=True))
    return rows[np.asarray(multihost_utils.process_allgather(mask_B, tiled=True))]


def _check_batch_size(name: str, batch_size, mesh: Mesh) -> None:
    _check_count(name, batch_size)
    if batch_size % mesh.size:
        raise ValueError(f"{name}={batch_size} must be divisible by the number of devices in the mesh ({mesh.size})")


def _embed_rows(embed_fn: Callable, params: Any, images, rows: np.ndarray, mesh: Mesh, batch_size: int) -> np.ndarray:
    embeddings = [
        _gather_rows(_embed_batch(embed_fn, params, batch["image"]), batch["mask"])
        for batch in padded_batches({"image": _RowSubset(images, rows)}, batch_size=batch_size, mesh=mesh)
    ]
    return np.concatenate(embeddings)


def embed_images(embed_fn: Callable, params: Any, images, rows=None, *, mesh: Mesh | None = None,
                 batch_size: int = 256) -> np.ndarray:
    """Unit-norm embeddings (len(rows), E) float32 of images[rows] (default: every image), on the host, computed in
    global batches of `batch_size` sharded over the mesh's 'data' axis (the max step's first half, also used by the
    random-views ablation). embed_fn and images as in `max_step`."""
    mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
    _check_batch_size("batch_size", batch_size, mesh)
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    return _embed_rows(embed_fn, params, images, rows, mesh, batch_size)


def max_step(embed_fn: Callable, params: Any, images, object_ids: Sequence, *, mesh: Mesh | None = None,
             batch_size: int = 256, object_batch_size: int = 64, num_neighbours: int = DEFAULT_NUM_NEIGHBOURS,
             num_hard: int = DEFAULT_NUM_HARD_VIEWS,
             max_views_per_object: int | None = DEFAULT_MAX_VIEWS_PER_OBJECT) -> AlignmentTargets:
    """Embeds every multi-view image and fixes the object centres and hard sets for the next epoch.

    embed_fn(params, images_BxHxWxC) -> (B, E) image embeddings (the tuned model in eval mode, no dropout); pass the
    same function every epoch so it compiles once. images: an (N, H, W, C) array, or anything whose
    images[row_array] returns those rows (e.g. `robust_jax.data.mvcap.ImageFiles`, which decodes on demand).
    object_ids: length N. Images are embedded in global batches of `batch_size` sharded over the mesh's 'data'
    axis, then objects are processed `object_batch_size` at a time, also sharded. The result does not depend on the
    device count (each view's embedding and each object's maths are independent of the batch split).
    """
    mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
    _check_batch_size("batch_size", batch_size, mesh)
    _check_batch_size("object_batch_size", object_batch_size, mesh)
    num_neighbours = _check_count("num_neighbours", num_neighbours)
    num_hard = _check_count("num_hard", num_hard)
    if len(images) != len(object_ids):
        raise ValueError(f"images has {len(images)} rows but object_ids has {len(object_ids)}; expected one object "
                         "id per image")
    groups = group_views(object_ids, max_views_per_object)
    _check_neighbour_count(groups.valid_OxV, num_neighbours)
    _check_views_per_object(groups.valid_OxV, num_hard, f"num_hard={num_hard}")

    grouped_rows = groups.rows_OxV[groups.valid_OxV]  # dataset rows in object-major order
    embeddings_NxE = _embed_rows(embed_fn, params, images, grouped_rows, mesh, batch_size)

    position_OxV = np.zeros(groups.rows_OxV.shape, np.int64)
    position_OxV[groups.valid_OxV] = np.arange(len(grouped_rows))
    object_arrays = {"embeddings": _GroupedEmbeddings(embeddings_NxE, position_OxV, groups.valid_OxV),
                     "valid": groups.valid_OxV}
    centres, hard_positions = [], []
    for batch in padded_batches(object_arrays, batch_size=object_batch_size, mesh=mesh):
        centres_OxE, hard_OxK, _ = _centres_and_hard_views(batch["embeddings"], batch["valid"], num_neighbours,
                                                           num_hard)
        centres.append(_gather_rows(centres_OxE, batch["mask"]))
        hard_positions.append(_gather_rows(hard_OxK, batch["mask"]))
    hard_OxK = np.concatenate(hard_positions)
    hard_rows_OxK = np.take_along_axis(groups.rows_OxV, hard_OxK, axis=1)

    object_index_N = np.full(len(object_ids), -1, np.int32)
    object_index_N[grouped_rows] = np.nonzero(groups.valid_OxV)[0]
    is_hard_N = np.zeros(len(object_ids), bool)
    is_hard_N[hard_rows_OxK.reshape(-1)] = True
    return AlignmentTargets(object_ids=groups.object_ids, centres_OxE=np.concatenate(centres),
                            hard_rows_OxK=hard_rows_OxK, object_index_N=object_index_N, is_hard_N=is_hard_N)


# ------------------------------------------------------------------------------------------------------ min step


@jax.jit
def _viewpoint_invariance_loss(z_BxE, centres_BxE, is_hard_B, margin):
    centres_BxE = jax.lax.stop_gradient(centres_BxE)
    cosine_B = jnp.sum(l2_normalize(z_BxE.astype(jnp.float32)) * l2_normalize(centres_BxE.astype(jnp.float32)),
                       axis=-1)
    per_view_B = jax.nn.relu(1.0 - cosine_B + margin)
    num_hard = jnp.sum(is_hard_B)
    return jnp.sum(jnp.where(is_hard_B, per_view_B, 0.0)) / jnp.maximum(num_hard, 1)


def viewpoint_invariance_loss(z_BxE, centres_BxE, is_hard_B, margin: float = DEFAULT_MARGIN) -> jax.Array:
    """L_VI: the mean over the batch's hard views of max(0, 1 - cos(z, c) + margin); exactly 0 when no view of the
    batch is hard. The centres are fixed targets: no gradient flows into them. Callable inside a jitted loss."""
    _check_margin(margin)
    shape = jnp.shape(z_BxE)
    if len(shape) != 2 or jnp.shape(centres_BxE) != shape or jnp.shape(is_hard_B) != shape[:1]:
        raise ValueError(f"z_BxE {jnp.shape(z_BxE)}, centres_BxE {jnp.shape(centres_BxE)} and is_hard_B "
                         f"{jnp.shape(is_hard_B)}: expected (B, E), (B, E) and (B,)")
    if jnp.result_type(is_hard_B) != jnp.bool_:
        raise ValueError(f"is_hard_B has dtype {jnp.result_type(is_hard_B)}; expected bool")
    return _viewpoint_invariance_loss(z_BxE, centres_BxE, is_hard_B, margin)


# ------------------------------------------------------------------------------------------------------ ablation


@jax.jit
def _random_view_targets(key, valid_OxV):
    num_views_O = valid_OxV.sum(axis=1)
    # valid positions first, in order: the r-th valid view of object o is order_OxV[o, r].
    order_OxV = jnp.argsort(~valid_OxV, axis=1, stable=True)
    rank_OxV = jnp.cumsum(valid_OxV, axis=1) - 1
    draw_OxV = jax.random.randint(key, valid_OxV.shape, 0, (num_views_O - 1)[:, None])
    other_rank_OxV = draw_OxV + (draw_OxV >= rank_OxV)  # skip the view itself: uniform over the other views
    target_OxV = jnp.take_along_axis(order_OxV, other_rank_OxV, axis=1)
    positions_OxV = jnp.broadcast_to(jnp.arange(valid_OxV.shape[1]), valid_OxV.shape)
    return jnp.where(valid_OxV, target_OxV, positions_OxV).astype(jnp.int32)


def random_view_targets(key: jax.Array, valid_OxV) -> jax.Array:
    """The "random views" ablation: for every view, the position (within its object) of another valid view of the
    same object drawn uniformly, to be aligned to in place of the centre. Padding entries point at themselves.
    (O, V) bool -> (O, V) int32; needs at least 2 views per object."""
    valid_OxV = jnp.asarray(valid_OxV)
    if valid_OxV.ndim != 2 or valid_OxV.dtype != jnp.bool_:
        raise ValueError(f"valid_OxV has shape {tuple(valid_OxV.shape)} and dtype {valid_OxV.dtype}; "
                         "expected a bool (objects, views) mask")
    _check_views_per_object(valid_OxV, 2, "a random other view")
    return _random_view_targets(key, valid_OxV)

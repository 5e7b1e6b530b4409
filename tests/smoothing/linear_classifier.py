"""Base classifiers whose smoothed class probabilities are known in closed form.

For f(x) = [w^T (x - x0) > 0] and noise N(0, sigma^2 I), P(f(x + delta) = 1) = Phi(w^T (x - x0) / (sigma ||w||)), so the
smoothed classifier is f itself and its exact L2 robust radius is the distance |w^T (x - x0)| / ||w|| to the hyperplane.
"""

import jax.numpy as jnp
import numpy as np

DIMENSION = 16


def hyperplane(seed: int = 0):
    """Params of a unit-normal hyperplane through the centre of [0, 1]^DIMENSION."""
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=DIMENSION)
    normal /= np.linalg.norm(normal)
    return {"normal": jnp.asarray(normal, jnp.float32), "offset_point": jnp.full(DIMENSION, 0.5, jnp.float32)}


def halfspace_logits(params, inputs_BxD):
    """Two logits (-s, s) with s the signed distance to the hyperplane: class 1 on the side the normal points to."""
    signed_distance_B = (inputs_BxD - params["offset_point"]) @ params["normal"]
    return jnp.stack([-signed_distance_B, signed_distance_B], axis=-1)


def point_at_distance(params, signed_distance: float) -> np.ndarray:
    """The input whose signed distance to the hyperplane is signed_distance (stays inside [0, 1] for |d| <= 0.6)."""
    return np.asarray(params["offset_point"] + signed_distance * params["normal"], np.float32)


def random_linear_logits(params, inputs_BxD):
    """A many-class linear classifier, so counts carry enough detail to notice any change in the noise."""
    return (inputs_BxD - 0.5) @ params["weights_DxC"]


def random_linear_params(num_classes: int = 10, seed: int = 1):
    rng = np.random.default_rng(seed)
    return {"weights_DxC": jnp.asarray(rng.normal(size=(DIMENSION, num_classes)), jnp.float32)}

"""A tiny rRCM network on 8x8x1 images, small enough that tests compile it in seconds."""

import jax

from robust_jax.smoothing.methods.rrcm.model import rrcm_net

IMAGE_SHAPE = (8, 8, 1)


def init_key() -> jax.Array:
    """Parameter initialisation compiles several times faster with the "rbg" generator than with threefry (the
    trainer's default); the initial values do not matter to the tests."""
    return jax.random.key(0, impl="rbg")


def tiny_rrcm_net(num_classes: int = 0):
    return rrcm_net("Ti", num_classes=num_classes, image_size=8, channels=1, patch_size=4, width=16, depth=1,
                    num_heads=2, mlp_dim=32, projection_dim=8, projector_hidden_dim=32, level_embedding_dim=16)

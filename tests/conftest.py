"""Test set-up: JAX sees 8 CPU devices, so sharded code is tested on one machine."""
import os
import zlib

# Must happen before JAX initialises its backends.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402


@pytest.fixture
def key(request):
    """A fresh PRNG key per test, derived from the test's name so failures reproduce."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return jax.random.key(seed)

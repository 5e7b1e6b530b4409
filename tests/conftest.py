"""Test set-up: JAX sees 8 CPU devices, so sharded code is tested on one machine, and every test process of one
suite run (the pytest workers and the runs the tests start with subprocess) shares one persistent compilation cache,
so a function compiled by one test is loaded, not compiled again, by the next (the suite is compile-bound). XLA's
CPU kernels run single-threaded in the tests (two workers share two cores)."""
import atexit
import os
import shutil
import tempfile
import zlib

# Must happen before JAX initialises its backends. The cache directory is made by the first process of the run
# (the pytest-xdist controller when there is one) and inherited through the environment by everything it starts.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="robust_jax_test_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Two pytest-xdist workers share the two cores: XLA's multi-threaded Eigen kernels in each would oversubscribe them
# (measured on four of the longest tests: 161 s single-threaded against 180 s, user time 265 s against 295 s).
if "--xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), "--xla_cpu_multi_thread_eigen=false"]))
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402


@pytest.fixture
def key(request):
    """A fresh PRNG key per test, derived from the test's name so failures reproduce."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return jax.random.key(seed)


@pytest.fixture(scope="session")
def one_device():
    """A data mesh over the first device, for the end-to-end runs of the larger presets: on two cores, 8 virtual
    devices add 20-35% to a tiny preset's time (8 programs and their collectives per step). Sharding and its
    equality with one device are tested on 8 devices where they are built (tests/core, the max step, FSDP), and the
    smaller presets still run end to end on all 8."""
    from robust_jax.core.mesh import make_data_mesh

    return make_data_mesh(jax.devices()[:1])


def pytest_collection_modifyitems(config, items):
    """The tests marked slow first, so that the two pytest-xdist workers start on the long ones and the short ones
    fill the gaps at the end (otherwise a long test collected late leaves one worker idle while it runs)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)

"""One process of a two-process CPU run (started by test_multihost.py): trains digits `tiny`, saves the parameters
of the checkpoint it wrote."""

import sys

import jax

process_id, num_processes, port, workdir, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
jax.config.update("jax_num_cpu_devices", 1)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
if int(num_processes) > 1:
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=int(num_processes), process_id=int(process_id)
    )

import numpy as np  # noqa: E402

sys.path.insert(0, ".")
from robust_jax.configs import digits  # noqa: E402
from robust_jax.core.train import restore  # noqa: E402
from robust_jax.digits import study  # noqa: E402

config = digits.get_config("tiny")
config.num_steps = 12
config.checkpoint_every = 6
config.batch_size = 32
config.eval_batch_size = 64
output = study.run(config, workdir)
(training,) = study.trainings(config, workdir, None)
params = restore(training, workdir).state.params  # the checkpoint the processes wrote together, read back whole
if jax.process_index() == 0:
    flat = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    flat["__test_accuracy__"] = np.asarray(output["metrics"]["test_accuracy"])
    np.savez(out, **flat)

"""robust_jax: JAX re-implementations of published work on robustness under distribution shift.

From a notebook:

    import robust_jax
    config = robust_jax.get_config("smoothing", "tiny")    # any study, any preset, from any directory
    results = robust_jax.run_study(config, "workdirs/smoothing_tiny")
    run = robust_jax.load_run("workdirs/smoothing_tiny")     # config, model, restored params, results, history
"""

from robust_jax.core.config_loading import get_config
from robust_jax.core.run import STUDIES, Run, load_run, run_study

__all__ = ["STUDIES", "Run", "get_config", "load_run", "run_study"]

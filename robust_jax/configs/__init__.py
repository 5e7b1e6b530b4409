"""One config file per study: `get_config(preset)`; load them with `robust_jax.get_config(study, preset)`."""

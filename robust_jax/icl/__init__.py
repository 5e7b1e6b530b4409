"""In-context learning of linear regression: ZFB's linear self-attention, its closed-form theory, prompt
distributions with their shifts, classical baselines and Garg et al.'s evaluation metric."""

from robust_jax.icl.baselines import (
    averaging,
    least_squares,
    nearest_neighbours,
    one_step_gradient_descent,
    ridge,
    tune_gradient_descent_step_size,
    zero_estimator,
)
from robust_jax.icl.evaluate import bootstrap_interval, normalized_squared_error, summarize_errors
from robust_jax.icl.lsa import (
    LinearSelfAttention,
    embed_prompts,
    lsa_predict,
    params_from_weights,
    prompt_loss,
    squared_loss,
)
from robust_jax.icl.tasks import SHIFT_NAMES, PromptSpec, Prompts, apply_shift, prompts_at, sample_prompts
from robust_jax.icl.theory import (
    expected_test_error,
    gamma,
    global_minimum,
    predict_at_minimum,
    varying_covariance_minimum,
)

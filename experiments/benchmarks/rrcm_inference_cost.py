"""Inference cost per noise sample of the smoothing methods of a config (issue 12, item 3): rRCM (one ViT forward)
against diffusion-denoised smoothing (denoiser + classifier) and the noise-trained classifier.

    python -m experiments.benchmarks.rrcm_inference_cost [--preset cpu] [--batch 1000] [--repeats 15]

The networks are those of configs/rrcm.py's preset, freshly initialised (the cost does not depend on the weights),
in the exact certification form (`CertifiableClassifier.apply_fn`). FLOPs: XLA's cost analysis of the compiled
function; time: median seconds per sample over `--repeats` rounds, one call of each method per round (so a change in
the machine's load hits every method alike). The load average is printed next to the numbers.
The last line is {"benchmark": "rrcm_inference_cost", "results": {"<method>_mflops": ..., "<method>_us": ...,
"rrcm_over_denoised_flops": ..., "rrcm_over_denoised_time": ...}}.
"""

from __future__ import annotations

import argparse
import json
import os


def certifiable_classifiers(config):
    import jax
    import jax.numpy as jnp

    from robust_jax.smoothing.methods.denoised import method as denoised_method
    from robust_jax.smoothing.methods.rrcm import method as rrcm_method
    from robust_jax.smoothing.classifiers import CertifiableClassifier, build_classifier
    from robust_jax.smoothing.methods.denoised.denoiser import TinyUNet, denoised_apply_fn, make_denoiser_init_fn
    from robust_jax.smoothing.methods.rrcm.apply import rrcm_apply_fn
    from robust_jax.smoothing.study_data import dataset_shape

    num_classes, image_shape = dataset_shape(config)
    sigma = config.sigmas[0]
    key = jax.random.key(0)
    classifier = build_classifier(config, num_classes, image_shape)
    params, model_state = jax.jit(classifier.init_fn)(key)
    apply_fn, classifier_params = classifier.for_certification({"params": params, **model_state})
    denoiser = TinyUNet(config.denoised.denoiser_channels)
    denoiser_params, _ = jax.jit(make_denoiser_init_fn(denoiser, image_shape))(key)
    network = rrcm_method.build_network(config.rrcm, num_classes, image_shape)
    rrcm_params = jax.jit(lambda k: network.init(k, jnp.zeros((1, *image_shape)), 1.0, project=False))(key)
    return image_shape, {
        "gaussian": CertifiableClassifier(apply_fn, classifier_params),
        "denoised": CertifiableClassifier(
            denoised_apply_fn(denoiser, apply_fn, sigma, denoised_method.alphas_cumprod()),
            {"denoiser": {"params": denoiser_params}, "classifier": classifier_params}),
        "rrcm": CertifiableClassifier(rrcm_apply_fn(network, sigma, config.rrcm.curriculum_end_levels),
                                      {"params": rrcm_params["params"]}),
    }


def measure(preset: str, batch: int, repeats: int) -> dict[str, float]:
    """FLOPs (millions) and microseconds per noise sample of each method of configs/rrcm.py's `preset`, and the ratios
    rrcm / denoised."""
    from robust_jax.configs import rrcm
    from robust_jax.smoothing.inference_cost import flops_per_sample, seconds_per_sample

    config = rrcm.get_config(preset)
    image_shape, classifiers = certifiable_classifiers(config)
    load_before = os.getloadavg()[0]
    flops = {name: flops_per_sample(c.apply_fn, c.params, image_shape, batch) for name, c in classifiers.items()}
    seconds = seconds_per_sample({name: (c.apply_fn, c.params) for name, c in classifiers.items()}, image_shape,
                                 batch, repeats)
    load_after = os.getloadavg()[0]
    results = {}
    for name in classifiers:
        results[f"{name}_mflops"] = flops[name] / 1e6
        results[f"{name}_us"] = seconds[name] * 1e6
        print(f"{name:10s} {flops[name] / 1e6:8.3f} MFLOP/sample {seconds[name] * 1e6:8.1f} us/sample")
    results["rrcm_over_denoised_flops"] = flops["rrcm"] / flops["denoised"]
    results["rrcm_over_denoised_time"] = seconds["rrcm"] / seconds["denoised"]
    print(f"rrcm / denoised: FLOPs {results['rrcm_over_denoised_flops']:.3f}, time "
          f"{results['rrcm_over_denoised_time']:.3f} (load average {load_before:.1f} -> {load_after:.1f})", flush=True)
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    results = measure(args.preset, args.batch, args.repeats)
    print(json.dumps({"benchmark": "rrcm_inference_cost", "results": results}))


if __name__ == "__main__":
    main()

"""The omniview study: Omniview-Tuning (Ruan et al., ECCV 2024) of a CLIP, with its ablations, evaluated zero-shot
on held-out objects' canonical, viewpoint-OOD and corrupted views.

Stage 1 (`base_model.py`) makes the base CLIP once per workdir: trained from scratch on canonical views
(`pretrain.py`, in <workdir>/base) or loaded (another run's workdir, OpenCLIP or HuggingFace safetensors).
Stage 2 (`tuning.py`) tunes it once per variant in config.variants, each in <workdir>/tune_<variant>, with the
minimax alternation: the max step once per epoch, the min step every batch, through `core.train`.

results.json metrics hold, besides the accuracies, units (core/verdicts.py's contract): per held-out object and model
(base and every variant), its top-1 accuracy on its viewpoint-OOD views ("viewpoint_ood_top1"), its canonical views
("canonical_top1") and its corrupted canonical views ("corrupted_top1"), the units the paired claims are judged on.

Writes to the workdir, besides what every run writes: zero_shot_top1.{md,csv,png} (the table), multiview_grid.png
(the procedural objects and their views) and timings.json (wall time per stage of this process; timings stay out of
results.json so that a resumed run's results equal an uninterrupted run's).
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from robust_jax.core import checks
from robust_jax.core import mesh as mesh_lib
from robust_jax.core.run import read_history
from robust_jax.core.train import drive, train
from robust_jax.data import multiview
from robust_jax.data import mvcap
from robust_jax.models import clip as clip_lib
from robust_jax.omniview import base_model, evaluation, pretrain, report, tuning, tuning_data, tuning_params
from robust_jax.omniview import captions as captions_lib
from robust_jax.omniview import gates as gates_lib
from robust_jax.omniview import zero_shot
from robust_jax.omniview.zero_shot import TEMPLATE_SETS, normalise_images

TUNE_DATA_SOURCES = ("procedural", "mvcap")
OOD_VIEW_KINDS = tuple(kind for kind in multiview.VIEW_KINDS if kind != "canonical")


# ------------------------------------------------------------------------------------------------------ checks


def _check_metadata(field: str, path: str, loader):
    if not isinstance(path, str) or not path:
        checks.fail(f"config.{field}", path, "expected the path of a metadata file")
    try:
        return loader(path)
    except (ValueError, FileNotFoundError) as error:
        checks.fail(f"config.{field}", path, str(error))


def _tuning_views_per_object(config: ml_collections.ConfigDict) -> tuple[int, str]:
    """(the fewest views any tuning object has in the max step, which object) from the data, before any work."""
    if config.tune_data == "procedural":
        count = tuning_data.views_per_tuning_object(config.views_per_object, config.canonical_fraction,
                                                    config.tune_view_kinds)
        return min(count, config.max_views_per_object), "every procedural tuning object"
    views = _check_metadata("mvcap_metadata", config.mvcap_metadata, mvcap.load_mvcap_metadata)
    _check_metadata("image_caption_metadata", config.image_caption_metadata, mvcap.load_image_caption_metadata)
    counts = mvcap.group_views(views.obj_ids, config.max_views_per_object).views_per_object
    fewest = int(np.argmin(counts))
    return int(counts[fewest]), f"obj_id {mvcap.group_views(views.obj_ids).object_ids[fewest]!r}"


def check_config(config: ml_collections.ConfigDict, device_count: int | None = None) -> None:
    device_count = jax.device_count() if device_count is None else device_count
    # data: the procedural multi-view set (evaluation always, tuning with tune_data='procedural')
    checks.check_int("config.num_objects_per_category", config.num_objects_per_category, minimum=2)
    checks.check_int("config.views_per_object", config.views_per_object, minimum=2)
    checks.check_int("config.image_size", config.image_size, minimum=8, maximum=256)
    checks.check_float("config.canonical_fraction", config.canonical_fraction, positive=True, below=1.0)
    checks.check_float("config.heldout_fraction", config.heldout_fraction, positive=True, below=1.0)
    if not isinstance(config.data_cache_dir, str):
        checks.fail("config.data_cache_dir", config.data_cache_dir, "expected a path string ('' for the default cache)")
    checks.check_float("config.drop_colour_probability", config.drop_colour_probability, non_negative=True,
                       at_most=1.0)
    checks.check_float("config.category_free_fraction", config.category_free_fraction, non_negative=True,
                       at_most=1.0)
    checks.check_nonempty_unique("config.headline_view_kinds", config.headline_view_kinds)
    for i, kind in enumerate(config.headline_view_kinds):
        checks.check_choice(f"config.headline_view_kinds[{i}]", kind, OOD_VIEW_KINDS)
    # stage 1
    checks.check_choice("config.base_source", config.base_source, base_model.BASE_SOURCES)
    if config.base_source in ("pretrain", "workdir"):
        pretrain.check_architecture_fields(config)
    if config.base_source == "pretrain":
        pretrain.check_pretrain_fields(config, device_count)
    # stage 2
    checks.check_nonempty_unique("config.variants", config.variants)
    for i, name in enumerate(config.variants):
        checks.check_choice(f"config.variants[{i}]", name, tuning.VARIANTS)
    checks.check_choice("config.tune_data", config.tune_data, TUNE_DATA_SOURCES)
    if len(set(config.tune_view_kinds)) != len(config.tune_view_kinds):
        checks.fail("config.tune_view_kinds", tuple(config.tune_view_kinds), "values must not repeat")
    for i, kind in enumerate(config.tune_view_kinds):
        checks.check_choice(f"config.tune_view_kinds[{i}]", kind, OOD_VIEW_KINDS)
    checks.check_int("config.batch_size_2d", config.batch_size_2d, minimum=1)
    checks.check_divisible("config.batch_size_2d", config.batch_size_2d, device_count, "the device count")
    checks.check_int("config.steps_per_epoch", config.steps_per_epoch, minimum=0)
    checks.check_float("config.end_learning_rate", config.end_learning_rate, positive=True,
                       at_most=config.learning_rate)
    checks.check_float("config.weight_decay", config.weight_decay, non_negative=True)
    checks.check_choice("config.lr_schedule_unit", config.lr_schedule_unit, ("step", "epoch"))
    checks.check_bool("config.max_step_augment", config.max_step_augment)
    checks.check_choice("config.itc_targets", config.itc_targets, ("same_caption", "diagonal"))
    checks.check_bool("config.clamp_logit_scale", config.clamp_logit_scale)
    checks.check_bool("config.ceiling", config.ceiling)
    checks.check_int("config.tuning_seeds", config.tuning_seeds, minimum=1)
    checks.check_float("config.gradient_clip_norm", config.gradient_clip_norm, positive=True)
    checks.check_float("config.vi_weight", config.vi_weight, non_negative=True)
    checks.check_float("config.margin", config.margin, non_negative=True)
    checks.check_float("config.max_rotation_degrees", config.max_rotation_degrees, non_negative=True, at_most=180.0)
    checks.check_float("config.max_translation", config.max_translation, non_negative=True, at_most=0.5)
    checks.check_int("config.lora_rank", config.lora_rank, minimum=1)
    checks.check_float("config.lora_alpha", config.lora_alpha, positive=True)
    checks.check_choice("config.lora_targets", config.lora_targets, tuple(tuning_params.LORA_TARGETS))
    checks.check_int("config.viformer_layers", config.viformer_layers, minimum=1)
    checks.check_int("config.viformer_heads", config.viformer_heads, minimum=1)
    checks.check_int("config.viformer_mlp_dim", config.viformer_mlp_dim, minimum=1)
    if config.base_source in ("pretrain", "workdir"):
        checks.check_divisible("config.embed_dim", config.embed_dim, config.viformer_heads, "config.viformer_heads")
    neighbours = checks.check_int("config.num_neighbours", config.num_neighbours, minimum=1)
    num_hard = checks.check_int("config.num_hard_views", config.num_hard_views, minimum=1)
    checks.check_int("config.max_views_per_object", config.max_views_per_object, minimum=2)
    checks.check_int("config.max_step_batch_size", config.max_step_batch_size, minimum=1)
    checks.check_divisible("config.max_step_batch_size", config.max_step_batch_size, device_count,
                           "the device count")
    if config.micro_batch_size:
        checks.fail("config.micro_batch_size", config.micro_batch_size,
                    "must be 0: the contrastive loss couples every example of a batch, so it cannot be accumulated "
                    "over micro-batches")
    checks.check_int("config.eval_batch_size", config.eval_batch_size, minimum=1)
    checks.check_choice("config.prompt_templates", config.prompt_templates, TEMPLATE_SETS)
    if config.tune_data == "mvcap" and config.base_source in ("pretrain", "workdir"):
        checks.fail("config.tune_data", config.tune_data,
                    "MVCap captions are free text: tune an imported CLIP (base_source 'openclip' or 'huggingface'), "
                    "whose BPE tokenizer reads them, not the word-level from-scratch CLIP")
    # views per object against K and the neighbour count, from the data, before any work
    if any(tuning.VARIANTS[name].alignment != tuning.NO_ALIGNMENT for name in config.variants):
        fewest, which = _tuning_views_per_object(config)
        if num_hard > fewest:
            checks.fail("config.num_hard_views", num_hard,
                        f"must be <= the views an object has in the max step ({which} has {fewest})")
        if neighbours >= fewest:
            checks.fail("config.num_neighbours", neighbours,
                        f"must be < the views an object has in the max step ({which} has {fewest}; a view is not "
                        "its own neighbour)")
    elif config.tune_data == "mvcap":
        _tuning_views_per_object(config)
    base_model.check_base(config)


# --------------------------------------------------------------------------------------------------------- run


def load_data(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    return multiview.make_multiview_dataset(
        num_objects_per_category=config.num_objects_per_category, views_per_object=config.views_per_object,
        image_size=config.image_size, seed=config.seed, cache_dir=config.data_cache_dir or None,
        canonical_fraction=config.canonical_fraction, heldout_fraction=config.heldout_fraction, progress=True)


def _tuning_data(config, data, base: base_model.Base) -> tuning_data.TuningData:
    if config.tune_data == "mvcap":
        return tuning_data.metadata_tuning_data(config.mvcap_metadata, config.image_caption_metadata,
                                                base.model.config.vision.image_size, base.tokenize)
    category_names = [str(n) for n in data["category_names"]]
    colour_names = [str(n) for n in data["colour_names"]]
    generic = config.category_free_fraction > 0
    table = captions_lib.caption_token_table(base.tokenize, category_names, colour_names, generic=generic)
    return tuning_data.procedural_tuning_data(data, config.tune_view_kinds, table, config.category_free_fraction,
                                              config.seed)


def _save_grid(config, data, workdir) -> None:
    first_object = [int(data["object_id"][np.argmax(data["category"] == c)])
                    for c in range(len(data["category_names"]))]
    num_canonical = multiview.split_summary(data)["views_per_object"]["canonical"]
    views = list(range(min(4, num_canonical))) + list(range(num_canonical, config.views_per_object))[:8]
    multiview.save_grid_png(data, os.path.join(workdir, "multiview_grid.png"), objects=first_object, views=views)


def _mean_over_seeds(reports: list[dict]) -> dict:
    """One variant's report over its tuning seeds: accuracies averaged over the seeds (every seed is evaluated on
    the same images), and top1_correct the fraction of the seeds that name each image right (so that the per-object
    units are averages over the seeds)."""
    if len(reports) == 1:
        return reports[0]
    mean = {key: {split: float(np.mean([r[key][split] for r in reports])) for split in reports[0][key]}
            for key in ("zero_shot_top1", "zero_shot_top5")}
    correct = np.mean([np.asarray(r["top1_correct"], float) for r in reports], axis=0)
    return {**mean, "zero_shot_count": reports[0]["zero_shot_count"], "top1_correct": correct}


def _num_trainable(params) -> int:
    return int(sum(np.size(p) for p in jax.tree.leaves(params)))


def _headline(top1: dict) -> dict:
    """The issue's targets, as measured (differences in accuracy points, fractions of 1)."""
    out = {}
    if "ovt" in top1:
        base, ovt = top1["base"], top1["ovt"]
        out.update(viewpoint_ood_gain=ovt["viewpoint_ood"] - base["viewpoint_ood"],
                   canonical_drop=base["canonical"] - ovt["canonical"],
                   corrupted_drop=base["corrupted"] - ovt["corrupted"])
        if "itc_only" in top1:
            out["ovt_minus_itc_only_viewpoint_ood"] = ovt["viewpoint_ood"] - top1["itc_only"]["viewpoint_ood"]
    return out


# The unit sets of the paired claims (core/verdicts.py's contract): evaluation group -> unit-set name.
UNIT_SETS = {"viewpoint_ood": "viewpoint_ood_top1", "canonical": "canonical_top1", "corrupted": "corrupted_top1"}


def paired_units(reports: dict, eval_set: dict) -> dict:
    """{UNIT_SETS[group]: unit set}: per held-out object, the fraction of its images in the group (its
    viewpoint-OOD views; its canonical views; its canonical views under every corruption) that each model (base and
    every variant) names right at top-1. Every model sees the same images, so the models are paired per object."""
    units = {}
    for group, name in UNIT_SETS.items():
        in_group = np.asarray(eval_set["groups"][group], bool)
        objects = np.asarray(eval_set["object"])[in_group]
        ids, per_image_object = np.unique(objects, return_inverse=True)
        images_per_object = np.bincount(per_image_object, minlength=len(ids))
        units[name] = {
            "unit": "held-out object",
            "ids": [str(i) for i in ids],
            "values": {model: (np.bincount(per_image_object, weights=np.asarray(r["top1_correct"], float)[in_group],
                                           minlength=len(ids)) / images_per_object).tolist()
                       for model, r in reports.items()},
        }
    return units


def trainings(config: ml_collections.ConfigDict, workdir: str, data: dict):
    """Stage 1, "base" (when base_source is 'pretrain'; with config.ceiling also "ceiling", the ceiling gate's
    CLIP pre-trained on every view), then stage 2: one training per variant and tuning seed,
    "tune_<variant>[_seed<k>]" (`tuning.VariantTraining`, `tuning.training_name`), all of seed 0 first."""
    del workdir
    if config.base_source == "pretrain":
        tokenizer = pretrain.build_tokenizer(config)
        pretrained = yield pretrain.pretrain_training(config, data, tokenizer)
        base = base_model.Base(model=pretrain.build_model(config, tokenizer.vocab_size),
                               variables=pretrained.state.params, tokenize=tokenizer)
        if config.ceiling:
            yield pretrain.pretrain_training(config, data, tokenizer, every_view=True)
    else:
        base = base_model.load_base(config)
    tuning_set = _tuning_data(config, data, base)
    for offset, name in tuning.tuning_runs(config):
        seed_config = tuning.seeded(config, offset)
        setup = tuning.setup_variant(tuning.VARIANTS[name], base.model, base.variables, seed_config,
                                     tuning_set.caption_tokens_KxVxL,
                                     tuning.steps_per_epoch(tuning_set.num_multiview_rows, seed_config))
        yield tuning.variant_training(setup, tuning.training_name(name, offset), base, tuning_set, seed_config)


def _clip_encoders(model: clip_lib.CLIP) -> tuple:
    """(encode_image_fn(params, images), encode_text_fn(params, token_ids)) of a plain CLIP (the base, the ceiling)."""
    return (lambda p, x: model.apply(p, x, method=clip_lib.CLIP.encode_image),
            lambda p, t: model.apply(p, t, method=clip_lib.CLIP.encode_text))


def _gates(config: ml_collections.ConfigDict, workdir: str, data: dict, base, epoch_steps: int) -> dict:
    """The testbed's gates (`gates`): pixel 1-NN and the frozen base's linear probe per view kind, and each
    variant's ITC and L_VI over its first and last epoch."""
    encode_image, _ = evaluation.bound_encoders(*_clip_encoders(base.model), base.variables)
    embed = lambda images: zero_shot.image_embeddings(lambda x: encode_image(normalise_images(x)), images,  # noqa: E731
                                                      config.eval_batch_size)
    losses = {}
    for offset, name in tuning.tuning_runs(config):
        run_name = tuning.training_name(name, offset)
        losses[run_name.removeprefix("tune_")] = gates_lib.tuning_loss_gates(
            read_history(os.path.join(workdir, run_name, "metrics.jsonl")), epoch_steps, config.num_steps)
    kinds = tuple(config.headline_view_kinds)
    return {**gates_lib.pixel_gates(data, kinds), **gates_lib.probe_gates(data, embed, config.seed, kinds),
            "tuning_losses": losses}


def run(config: ml_collections.ConfigDict, workdir: str, *, mesh: Mesh | None = None) -> dict:
    """Stage 1 (base, once per workdir), stage 2 (each variant, resuming), zero-shot evaluation of them all."""
    mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name):
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    data = load_data(config)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        _save_grid(config, data, workdir)
    lap("data_s")
    if config.base_source == "pretrain":
        pretrain.save_vocabulary(pretrain.build_tokenizer(config), os.path.join(workdir, pretrain.BASE_SUBDIR))

    def fit(training):
        if isinstance(training, tuning.VariantTraining):
            result = tuning.tune(training, workdir, mesh=mesh)
            lap(f"stage2_{training.name}_s")
        else:
            result = train(training, workdir, mesh=mesh)
            lap(f"stage1_{training.name}_s")
        return result

    trained = drive(trainings(config, workdir, data), fit)
    first = trained[f"tune_{config.variants[0]}"][0]  # every variant tunes the same base on the same set
    base, tuning_set, epoch_steps = first.base, first.tuning_set, first.epoch_steps
    eval_set = evaluation.evaluation_set(data, config.seed, tuple(config.headline_view_kinds))
    templates = TEMPLATE_SETS[config.prompt_templates]

    def evaluate(encode_image_fn, encode_text_fn, params):
        encode_image, encode_text = evaluation.bound_encoders(encode_image_fn, encode_text_fn, params)
        return evaluation.zero_shot_top1(encode_image, encode_text, base.tokenize, eval_set, templates,
                                         config.eval_batch_size, normalise_images)

    reports = {"base": evaluate(*_clip_encoders(base.model), base.variables)}
    lap("evaluate_base_s")
    trainable, per_seed = {}, {}
    for name in config.variants:
        seed_reports = []
        for offset in range(config.tuning_seeds):
            training, result = trained[tuning.training_name(name, offset)]
            seed_reports.append(evaluate(training.setup.tuned.encode_image, training.setup.tuned.encode_text,
                                         tuning.with_base(training.setup, result.state.params)))
        trainable[name] = _num_trainable(result.state.params)  # every seed trains the same tree
        reports[name] = _mean_over_seeds(seed_reports)
        per_seed[name] = [r["zero_shot_top1"] for r in seed_reports]
        lap(f"evaluate_{name}_s")

    ceiling = trained.get(pretrain.CEILING_SUBDIR)
    gates = _gates(config, workdir, data, base, epoch_steps)
    if ceiling is not None:  # the same architecture trained on every view, evaluated as the base is
        gates["ceiling"] = evaluate(*_clip_encoders(base.model), ceiling[1].state.params)["zero_shot_top1"]
    lap("gates_s")
    top1 = {name: r["zero_shot_top1"] for name, r in reports.items()}
    if jax.process_index() == 0:
        report.write_reports(top1, workdir)
        timings["total_s"] = sum(timings.values())
        with open(os.path.join(workdir, "timings.json"), "w") as f:
            json.dump(timings, f, indent=2)
            f.write("\n")
    metrics = {
        "zero_shot_top1": top1,
        "zero_shot_top5": {name: r["zero_shot_top5"] for name, r in reports.items()},
        "zero_shot_count": reports["base"]["zero_shot_count"],
        "zero_shot_top1_per_seed": per_seed,
        "targets": _headline(top1),
        "trainable_parameters": trainable,
        "tuning": {"multiview_pairs": tuning_set.num_multiview_rows,
                   "image_text_pairs": len(tuning_set.image_text["row"]),
                   "objects": len(set(np.asarray(tuning_set.object_ids).tolist())),
                   "steps_per_epoch": epoch_steps, "steps": config.num_steps},
        "splits": multiview.split_summary(data),
        "units": paired_units(reports, eval_set),
        "gates": gates,
    }
    return {"metrics": metrics}

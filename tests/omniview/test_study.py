"""The omniview study: bad input refused before any work, the tiny preset end to end with every variant, a base
model pre-trained a little longer that recognises held-out objects and loses accuracy on their unseen views (the
paper's premise), and a tuning run killed mid-epoch resuming to the same results."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import robust_jax
from experiments import reproduce
from robust_jax.configs import omniview as omniview_config
from robust_jax.core import verdicts
from robust_jax.core.checks import ConfigError
from robust_jax.core.config_loading import load_config
from robust_jax.core.run import run_study
from robust_jax.data import multiview
from robust_jax.omniview import study
from tests import sigkill

REPO = Path(__file__).resolve().parents[2]
TESTDATA = REPO / "tests" / "testdata"


def _tiny(**changes):
    config = omniview_config.get_config("tiny")
    for name, value in changes.items():
        config[name] = value
    return config


@pytest.mark.parametrize("changes, message", [
    # tiny tuning objects have 8 views (4 canonical + 1 of each OOD kind), 5 when tuned on 'below' only
    (dict(num_hard_views=9), r"config\.num_hard_views=9 .*every procedural tuning object has 8"),
    (dict(tune_view_kinds=("below",), num_hard_views=6), r"config\.num_hard_views=6 .*has 5"),
    (dict(num_neighbours=8), r"config\.num_neighbours=8 .*has 8"),
    (dict(margin=-0.1), r"config\.margin=-0\.1 .*>= 0"),
    (dict(tune_view_kinds=("sideways",)), r"config\.tune_view_kinds\[0\]='sideways' .*one of \['below'"),
    (dict(tune_view_kinds=("below", "below")), r"config\.tune_view_kinds=.*must not repeat"),
    (dict(variants=("ovt", "dropout")), r"config\.variants\[1\]='dropout' .*one of"),
    (dict(base_source="scratch"), r"config\.base_source='scratch' .*one of"),
    (dict(lr_schedule_unit="batch"), r"config\.lr_schedule_unit='batch' .*one of \['step', 'epoch'\]"),
    (dict(itc_targets="caption"), r"config\.itc_targets='caption' .*one of \['same_caption', 'diagonal'\]"),
    (dict(tuning_seeds=0), r"config\.tuning_seeds=0 .*>= 1"),
    (dict(lora_targets="mlp"), r"config\.lora_targets='mlp' .*one of \['qkv', 'blocks'\]"),
])
def test_bad_tuning_config_is_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        study.check_config(_tiny(**changes), device_count=1)


def test_itc_only_needs_no_views_per_object():
    study.check_config(_tiny(variants=("itc_only",), num_hard_views=99), device_count=1)  # no max step: no K


def _mvcap_folder(tmp_path, records=None):
    """Three objects with three views each, as 32 px PNGs, and two 2D pairs."""
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    views = []
    for obj in range(3):
        for view in range(3):
            path = f"images/o{obj}_v{view}.png"
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / path)
            views.append({"path": path, "caption": f"a photo of object {obj}", "obj_id": f"o{obj}", "img_id": view})
    records = views if records is None else records(views)
    (tmp_path / "mvcap.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "pairs.json").write_text(json.dumps([{"path": views[0]["path"], "caption": "a cat"}] * 2))
    return _tiny(tune_data="mvcap", mvcap_metadata=str(tmp_path / "mvcap.jsonl"),
                 image_caption_metadata=str(tmp_path / "pairs.json"), base_source="openclip",
                 base_path=str(TESTDATA / "openclip_tiny_gelu.safetensors"), base_model_name="tiny",
                 bpe_vocab_path=str(TESTDATA / "bpe_simple_vocab_16e6.txt.gz"), image_size=32, num_hard_views=2,
                 num_neighbours=2)


def test_mvcap_tuning_with_an_openclip_base_passes_the_checks(tmp_path):
    study.check_config(_mvcap_folder(tmp_path), device_count=1)


def _without(field, index):
    def edit(views):
        views[index] = {k: v for k, v in views[index].items() if k != field}
        return views
    return edit


def _missing_image(views):
    views[4] = dict(views[4], path="images/nowhere.png")
    return views


@pytest.mark.parametrize("edit, changes, message", [
    (_without("obj_id", 2), {}, r"config\.mvcap_metadata=.*record 2 \(line 3\): field 'obj_id' is missing"),
    (_missing_image, {}, r"config\.mvcap_metadata=.*record 4 \(line 5\): field 'path' = 'images/nowhere\.png' "
                         r"names an image file that does not exist"),
    (None, dict(num_hard_views=4), r"config\.num_hard_views=4 .*obj_id 'o0' has 3"),
    (None, dict(base_model_name="ViT-B-32"), r"config\.base_path=.*openclip_tiny_gelu\.safetensors.*expected an "
                                             r"OpenCLIP 'ViT-B-32' checkpoint.*does not match"),
    (None, dict(image_size=16), r"config\.image_size=16 .*checkpoint's image size \(32\)"),
    (None, dict(base_source="pretrain"), r"config\.tune_data='mvcap' .*BPE tokenizer"),
])
def test_bad_metadata_or_base_is_refused_before_any_work(tmp_path, edit, changes, message):
    config = _mvcap_folder(tmp_path, edit)
    for name, value in changes.items():
        config[name] = value
    with pytest.raises(ConfigError, match=message):
        study.check_config(config, device_count=1)


def test_base_workdir_of_another_architecture_is_refused(tmp_path):
    other = _tiny(vision_width=48)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(other.to_json_best_effort())
    config = _tiny(base_source="workdir", base_path=str(tmp_path / "other"))
    with pytest.raises(ConfigError, match=r"config\.base_path=.*another architecture: vision_width=48 there, 32 here"):
        study.check_config(config, device_count=1)
    digits = {"study": "digits"}
    (tmp_path / "other" / "config.json").write_text(json.dumps(digits))
    with pytest.raises(ConfigError, match=r"holds a 'digits' run"):
        study.check_config(config, device_count=1)


def test_bad_config_on_the_command_line_exits_2_before_writing(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "experiments.main", "--config=omniview:tiny",
                             "--config.margin=-1.0", f"--workdir={tmp_path / 'run'}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "config.margin=-1.0 is not allowed" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_tiny_preset_end_to_end(tmp_path, one_device):
    """The tiny preset with one variant of each kind of tuning: hard-view alignment (ovt), none (itc_only), random
    views, every weight (full_ft); the results layout, the table files, load_run. lora_only and viformer_only run the
    ovt path with fewer trainable leaves (tests/omniview/test_tuning.py checks which)."""
    config = _tiny(data_cache_dir=str(tmp_path / "cache"), variants=("ovt", "itc_only", "random_views", "full_ft"),
                   tuning_seeds=2, category_free_fraction=0.5)
    workdir = tmp_path / "run"
    metrics = run_study(config, str(workdir), mesh=one_device)["metrics"]
    models = {"base", *config.variants}
    # Two tuning seeds: each variant's accuracies are the mean of its two runs', which differ.
    per_seed = metrics["zero_shot_top1_per_seed"]
    assert set(per_seed) == set(config.variants) and all(len(runs) == 2 for runs in per_seed.values())
    for name, runs in per_seed.items():
        for split, value in metrics["zero_shot_top1"][name].items():
            assert value == pytest.approx((runs[0][split] + runs[1][split]) / 2)
    assert any(runs[0] != runs[1] for runs in per_seed.values())
    splits = {"canonical", "viewpoint_ood", "corrupted", "ood_below", "ood_above", "ood_behind", "ood_rolled"}
    assert set(metrics["zero_shot_top1"]) == models
    for model in models:
        assert set(metrics["zero_shot_top1"][model]) >= splits
        assert all(0.0 <= v <= 1.0 for v in metrics["zero_shot_top1"][model].values())
    assert metrics["zero_shot_count"]["canonical"] == metrics["splits"]["heldout_canonical_images"]
    # The per-object units: one per held-out object, every model, their mean the split's accuracy (each held-out
    # object has as many views of each kind as every other).
    units = verdicts.check_unit_sets(metrics["units"])
    for group, name in study.UNIT_SETS.items():
        assert len(units[name]["ids"]) == metrics["splits"]["heldout_objects"]
        assert set(units[name]["values"]) == models
        for model in models:
            assert np.mean(units[name]["values"][model]) == pytest.approx(metrics["zero_shot_top1"][model][group])
    assert metrics["zero_shot_count"]["corrupted"] == 3 * metrics["splits"]["heldout_canonical_images"]
    # 48 training objects x 8 views tuned on; 2D pairs = their 4 canonical views
    assert metrics["tuning"]["multiview_pairs"] == 48 * 8 and metrics["tuning"]["image_text_pairs"] == 48 * 4
    trainable = metrics["trainable_parameters"]
    assert trainable["itc_only"] == trainable["random_views"] == trainable["ovt"] < trainable["full_ft"]
    written = json.loads((workdir / "results.json").read_text())
    assert written["metrics"]["zero_shot_top1"] == metrics["zero_shot_top1"]
    for name in ("zero_shot_top1.md", "zero_shot_top1.csv", "zero_shot_top1.png", "multiview_grid.png",
                 "timings.json"):
        assert (workdir / name).exists(), name
    # one max step per epoch for the aligning variants, none for itc_only
    assert sorted(os.listdir(workdir / "tune_ovt" / "alignment")) == ["epoch_0000.safetensors",
                                                                       "epoch_0001.safetensors"]
    assert not (workdir / "tune_itc_only" / "alignment").exists()
    # The gates: every view kind's pixel 1-NN, the probe per OOD kind, the ceiling as the base is evaluated, and
    # each variant's losses over its first and last epoch.
    gates = metrics["gates"]
    assert set(gates["pixel_1nn"]) == set(gates["pixel_1nn_count"]) == {"canonical", "below", "above", "behind",
                                                                        "rolled", "viewpoint_ood"}
    assert gates["pixel_1nn_count"]["viewpoint_ood"] == metrics["zero_shot_count"]["viewpoint_ood"]
    assert set(gates["linear_probe"]) == {"below", "above", "behind", "rolled", "viewpoint_ood"}
    assert set(gates["ceiling"]) == set(metrics["zero_shot_top1"]["base"])
    assert gates["ceiling"] != metrics["zero_shot_top1"]["base"]
    assert set(gates["tuning_losses"]) == {*config.variants, *(f"{name}_seed1" for name in config.variants)}
    itc = {"itc_first", "itc_last", "itc_ratio", "itc_floor_first", "itc_floor_last", "itc_reducible_ratio"}
    assert set(gates["tuning_losses"]["ovt"]) == {*itc, "l_vi_first", "l_vi_last", "l_vi_ratio"}
    assert set(gates["tuning_losses"]["itc_only"]) == itc
    # The report's gate rules (experiments/paper_figures.toml) read figures this run has.
    paths = [entry[key] for entry in reproduce.load_figures()["figure"] if entry["study"] == "omniview"
             for key in ("metric", "minus") if key in entry]
    assert len(paths) == 7 and all(isinstance(reproduce.metric_at(metrics, path), float) for path in paths), paths
    run = robust_jax.load_run(str(workdir))
    trainings = {"base", "ceiling", *(f"tune_{name}{seed}" for name in config.variants for seed in ("", "_seed1"))}
    assert set(run.model) == set(run.params) == set(run.history) == trainings
    assert run.history["tune_ovt"][-1]["step"] == config.num_steps
    assert run.metrics == metrics


@pytest.mark.slow
def test_a_briefly_pretrained_base_recognises_held_out_objects_and_loses_on_unseen_views(tmp_path, one_device):
    """8 objects per category (48 held out, 192 canonical and 192 viewpoint-OOD test images), a 2-layer 64-wide
    ViT pre-trained 600 steps on canonical views: zero-shot top-1 on held-out objects' canonical views far above
    chance (1/24 = 0.042; measured 0.23) and 0.06 or more above the viewpoint-OOD views' (below, above and rolled;
    measured 0.08), as the paper finds for CLIP; image and caption paired at random, it stays near chance."""
    config = _tiny(variants=("ovt",), num_objects_per_category=8, vision_width=64, vision_layers=2, text_width=64,
                   embed_dim=32, pretrain_num_steps=600, pretrain_warmup_steps=40, checkpoint_every=1000)
    top1 = run_study(config, str(tmp_path), mesh=one_device)["metrics"]["zero_shot_top1"]["base"]
    assert top1["canonical"] > 0.18, top1
    assert top1["canonical"] - top1["viewpoint_ood"] > 0.06, top1


@pytest.mark.slow
def test_sigkill_inside_epochs_and_at_their_boundary_then_rerun_is_bitwise_identical(tmp_path):
    """A tuning run killed inside its first epoch, run again and killed right at the end of that epoch (before the
    next epoch's max step is kept: its targets are deleted, so the restart recomputes them from the restored
    parameters), run again and killed inside the last epoch, then run to the end: every training's state, logged
    losses and results equal those of a run never killed (tests/sigkill.py); with two tuning seeds, the second
    seed's run is killed too. It tunes with the official code's settings (the cosine stepped per epoch, the max step
    on augmented views, diagonal ITC targets, the temperature unclamped) and the cpu preset's category-free
    captions and LoRA on every vision-block kernel."""
    overrides = ["--config.variants=('ovt',)", "--config.num_steps=24", "--config.steps_per_epoch=8",
                 "--config.tuning_seeds=2",
                 "--config.checkpoint_every=3", f"--config.data_cache_dir={tmp_path / 'cache'}",
                 # the official code's tuning settings, the paper preset's: resumed like the rest
                 "--config.lr_schedule_unit=epoch", "--config.max_step_augment=True", "--config.itc_targets=diagonal",
                 "--config.clamp_logit_scale=False"]
    args = ["--config=omniview:tiny", *overrides]
    # Both runs read the dataset from the cache: a run that has just generated it has been seen to differ from one
    # that read it in the last bits of its tuning losses (not yet explained), which would hide what is tested here.
    tiny = omniview_config.get_config("tiny")
    multiview.make_multiview_dataset(tiny.num_objects_per_category, tiny.views_per_object, tiny.image_size,
                                     seed=tiny.seed, cache_dir=tmp_path / "cache",
                                     canonical_fraction=tiny.canonical_fraction,
                                     heldout_fraction=tiny.heldout_fraction)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    sigkill.run(args, whole)
    sigkill.kill_inside(args, killed, "tune_ovt", first=3, last=8)
    sigkill.kill_inside(args, killed, "tune_ovt", first=8, last=9)
    next_targets = killed / "tune_ovt" / "alignment" / "epoch_0001.safetensors"
    if next_targets.exists():
        next_targets.unlink()
    sigkill.kill_inside(args, killed, "tune_ovt", first=17, last=24)
    sigkill.kill_inside(args, killed, "tune_ovt_seed1", first=3, last=24)  # the second tuning seed's run
    sigkill.run(args, killed)
    config = load_config("omniview:tiny", [tuple(arg[len("--config."):].split("=", 1)) for arg in overrides])
    assert sigkill.compare_runs(config, whole, killed) == ["base", "ceiling", "tune_ovt", "tune_ovt_seed1"]
    for epoch in range(3):
        name = f"epoch_{epoch:04d}.safetensors"
        assert (whole / "tune_ovt" / "alignment" / name).read_bytes() == \
            (killed / "tune_ovt" / "alignment" / name).read_bytes()
    assert (whole / "zero_shot_top1.csv").read_bytes() == (killed / "zero_shot_top1.csv").read_bytes()

"""omniview: Omniview-Tuning (Ruan et al., ECCV 2024) of a CLIP, with its ablations, evaluated zero-shot on held-out
objects' canonical, viewpoint-OOD and corrupted (2D-OOD) views of the procedural multi-view set.

Command:
  python -m experiments.main --config=omniview:cpu --workdir=workdirs/omniview

Stage 1 makes the base CLIP once per workdir (base_source): 'pretrain' trains a small CLIP from scratch on canonical
views of the training objects (the stand-in for a web-scale CLIP: it has seen objects from the front only);
'workdir' reuses the base of another omniview run; 'openclip' / 'huggingface' load safetensors weights.
Stage 2 tunes it once per variant (variants): ovt (LoRA + VIFormer, L_ITC + lambda L_VI on hard views vs centres),
itc_only, random_views, lora_only, viformer_only, full_ft. The max step runs once per epoch (steps_per_epoch, 0 = a
pass over the multi-view pairs), the min step every batch of batch_size multi-view + batch_size_2d 2D pairs.
The train block (batch_size, num_steps, learning_rate, ...) is the tuning stage's; pre-training has pretrain_* fields.

Presets:
  tiny   seconds; tests and Colab. 3 objects per category at 16 px, 4 pre-training steps, 4 tuning steps per
         variant in 2 epochs. Accuracies are not meaningful.
  cpu    (default) 40 objects per category (30 tuned on, 10 held out), 16 views each (8 canonical, 2 of each OOD
         kind), 32 px. Stage 1: the small CLIP (ViT 4x4 patches of 8 px, width 96, 3 layers; text width 64,
         2 layers), 1,200 AdamW steps at batch 128. Stage 2: every variant, 600 steps (4 epochs of 180, one max
         step each) of 64 multi-view + 32 2D pairs, K = 5 hard views, margin 0.3, lambda 1, AdamW lr 1e-4 cosine
         to 1e-7 (the paper's 5e-5 is for 20k-35k steps on ViT-B), VIFormer MLP 256.
         Measured wall time (2 shared cores, load average 5-7, 1 device): data 15 s, stage 1 302 s, stage 2 per
         variant 74-159 s (ovt 106, itc_only 85, random_views 144, lora_only 76, viformer_only 74, full_ft 159) plus
         7-21 s of evaluation each: 17.2 minutes in all. In `make reproduce` on a fresh clone (2026-11-30, load
         average about 2, multi-view set read from the cache): 5 min 52 s.
         Measured zero-shot top-1 (%) on held-out objects, seed 0 (canonical / viewpoint-OOD / corrupted):
           base 87.0 / 35.1 / 66.6 (below 22.1, above 16.7, behind 82.5, rolled 19.2)
           lr 1e-4 (this preset; every variant in `make reproduce`, 2026-11-30): ovt 85.0 / 36.1 / 66.2, itc_only
             85.6 / 36.1 / 66.1, random_views 85.1 / 36.2 / 66.2, lora_only 85.5 / 36.0 / 66.8, viformer_only
             86.6 / 36.1 / 66.4, full_ft 68.8 / 34.2 / 49.5
           lr 1e-3 (--config.learning_rate=1e-3, every variant): ovt 54.2 / 28.7 / 42.7, itc_only 57.2 / 30.0 /
             44.0, random_views 54.7 / 28.9 / 43.1, lora_only 53.0 / 28.7 / 41.0, viformer_only 86.4 / 36.4 /
             66.0, full_ft 59.3 / 35.9 / 42.3
         The issue's target (viewpoint-OOD +10 points, canonical and corrupted within 2 points, OVT above ITC-only)
         is NOT met: at lr 1e-4 tuning keeps canonical and corrupted accuracy (-2.0, -0.4) but gains only
         1 point on viewpoint-OOD, OVT no better than ITC-only; at lr 1e-3 the adapted tower forgets. Without the
         rotation (lr 3e-4, max_rotation_degrees=0) it is the same: ovt 82.4 / 36.3 / 65.0, itc_only 83.6 / 36.5 /
         65.7, so the augmentation is not what holds the gain back.
  paper  for accelerators (not run here): ViT-B/32 from an OpenCLIP safetensors file (base_path, base_model_name;
         or base_source='huggingface' with a save_pretrained folder), MVCap-style metadata {path, caption, obj_id,
         img_id} (mvcap_metadata) plus 2D pairs {path, caption} (image_caption_metadata), batch 512 + 256,
         AdamW lr 5e-5 cosine to 1e-7, 80 OpenAI prompt templates; evaluated on the procedural set rendered at
         224 px (all of its objects are unseen). Set base_path, bpe_vocab_path and the metadata paths.

Results: results.json metrics zero_shot_top1[model][split] (model: base and each variant; split: canonical,
viewpoint_ood, corrupted, ood_<kind>, corrupted_<corruption>), zero_shot_top5, zero_shot_count, targets (OVT's gain
and drops), trainable_parameters, tuning, splits; zero_shot_top1.{md,csv,png}, multiview_grid.png, timings.json.

Override any field with --config.<field>=<value>, e.g. --config.variants="('ovt','itc_only')".
"""

import ml_collections

from robust_jax.core.config import new_config

PRESETS = ("tiny", "cpu", "paper")
ALL_VARIANTS = ("ovt", "itc_only", "random_views", "lora_only", "viformer_only", "full_ft")


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
    c, preset = new_config("omniview", preset, PRESETS, num_steps=600, batch_size=64, learning_rate=1e-4,
                           log_every=50, checkpoint_every=200)
    # data: the procedural multi-view set (evaluation always; tuning with tune_data='procedural')
    c.num_objects_per_category = 40
    c.views_per_object = 16
    c.image_size = 32
    c.canonical_fraction = 0.5
    c.heldout_fraction = 0.25
    c.data_cache_dir = ""  # '' = $ROBUST_JAX_CACHE/multiview or ~/.cache/robust_jax/multiview
    c.drop_colour_probability = 0.3  # captions without the colour word, in pre-training and tuning
    # stage 1: the base CLIP
    c.base_source = "pretrain"  # 'pretrain' | 'workdir' | 'openclip' | 'huggingface'
    c.base_path = ""  # workdir / .safetensors file / save_pretrained folder, for the other sources
    c.base_model_name = ""  # OpenCLIP model name for base_source='openclip', e.g. 'ViT-B-32'
    c.bpe_vocab_path = ""  # CLIP's bpe_simple_vocab_16e6.txt.gz, for 'openclip' and 'huggingface'
    # the from-scratch CLIP's architecture (base_source 'pretrain' / 'workdir')
    c.patch_size = 8
    c.vision_width = 96
    c.vision_layers = 3
    c.vision_heads = 4
    c.vision_mlp_ratio = 2
    c.text_width = 64
    c.text_layers = 2
    c.text_heads = 4
    c.text_mlp_ratio = 2
    c.embed_dim = 64
    c.context_length = 16
    c.pretrain_num_steps = 1200
    c.pretrain_batch_size = 128
    c.pretrain_learning_rate = 2e-3
    c.pretrain_warmup_steps = 100
    c.pretrain_weight_decay = 0.05
    c.pretrain_max_shift = 2
    # stage 2: tuning
    c.variants = ALL_VARIANTS
    c.tune_data = "procedural"  # 'procedural' | 'mvcap'
    c.mvcap_metadata = ""  # {path, caption, obj_id, img_id} records (tune_data='mvcap')
    c.image_caption_metadata = ""  # {path, caption} records: the 2D pairs (tune_data='mvcap')
    c.tune_view_kinds = ("below", "above", "behind", "rolled")  # canonical views are always tuned on
    c.batch_size_2d = 32  # 2D pairs per batch, besides batch_size multi-view pairs (2:1 as in the paper)
    c.steps_per_epoch = 0  # steps between max steps; 0 = one pass over the multi-view pairs
    c.end_learning_rate = 1e-7
    c.weight_decay = 0.05
    c.gradient_clip_norm = 1.0
    c.vi_weight = 1.0  # lambda
    c.margin = 0.3
    c.num_neighbours = 5
    c.num_hard_views = 5  # K
    c.max_views_per_object = 100
    c.max_step_batch_size = 256
    c.max_rotation_degrees = 90.0
    c.max_translation = 0.1
    c.lora_rank = 8
    c.lora_alpha = 8.0
    c.viformer_layers = 2
    c.viformer_heads = 4
    c.viformer_mlp_dim = 256  # 2048 in the paper (for a 512-d embedding); the small CLIP's embedding is 64-d
    # evaluation
    c.eval_batch_size = 256
    c.prompt_templates = "rendered_objects_8"  # or 'openai_imagenet_80'
    if preset == "tiny":
        c.num_objects_per_category = 3
        c.views_per_object = 8
        c.image_size = 16
        c.vision_width = 32
        c.vision_layers = 1
        c.vision_heads = 2
        c.text_width = 32
        c.text_layers = 1
        c.text_heads = 2
        c.embed_dim = 16
        c.pretrain_num_steps = 4
        c.pretrain_batch_size = 32
        c.pretrain_warmup_steps = 1
        c.num_steps = 4
        c.steps_per_epoch = 2
        c.batch_size = 16
        c.batch_size_2d = 8
        c.num_neighbours = 3
        c.num_hard_views = 2
        c.max_step_batch_size = 64
        c.viformer_mlp_dim = 32
        c.eval_batch_size = 64
        c.log_every = 2
        c.checkpoint_every = 2
    elif preset == "paper":
        c.base_source = "openclip"
        c.base_model_name = "ViT-B-32"
        c.image_size = 224
        c.num_objects_per_category = 11
        c.heldout_fraction = 0.95  # evaluation only: 10 of 11 objects per category rendered for it
        c.tune_data = "mvcap"
        c.batch_size = 512
        c.batch_size_2d = 256
        c.learning_rate = 5e-5
        c.num_steps = 30_000
        c.steps_per_epoch = 0
        c.checkpoint_every = 1000
        c.log_every = 100
        c.viformer_mlp_dim = 2048
        c.prompt_templates = "openai_imagenet_80"
        c.eval_batch_size = 512
    return c

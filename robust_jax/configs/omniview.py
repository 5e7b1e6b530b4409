"""omniview: Omniview-Tuning (Ruan et al., ECCV 2024) of a CLIP, with its ablations, evaluated zero-shot on held-out
objects' canonical, viewpoint-OOD and corrupted (2D-OOD) views of the procedural multi-view set.

Command:
  python -m experiments.main --config=omniview:cpu --workdir=workdirs/omniview

Stage 1 makes the base CLIP (base_source: 'pretrain', 'workdir', 'openclip', 'huggingface'); stage 2 tunes it per
variant (ovt, itc_only, random_views, lora_only, viformer_only, full_ft). The train block is the tuning stage's;
pre-training has pretrain_* fields.

Presets:
  tiny   seconds; tests and Colab (3 objects per category at 16 px, 4 steps per training); accuracies meaningless.
  cpu    (default) 40 objects per category (10 held out), 16 views each, 32 px; a small CLIP pre-trained 1,200 steps
         (rotations to ±30°) and the ceiling gate's on every view for as many epochs; every variant tuned with 2
         seeds, 20 epochs of 60 steps, AdamW 5e-3 stepped per epoch, LoRA r32 on every vision-block kernel, half the
         OOD views captioned without their category. Idle 2-core AMD EPYC: 19 min 0 s (2026-12-08). Expected
         zero-shot top-1 (%) canonical / viewpoint-OOD (below, above, rolled) / corrupted: base 82.2 / 17.4 / 63.8,
         ovt 79.9 / 25.4 / 60.5, itc_only 81.1 / 25.0 / 61.9 (results/REPORT.md, docs/results/omniview.md).
  paper  for accelerators (not run): ViT-B/32 from an OpenCLIP safetensors file (base_path, base_model_name; or
         base_source='huggingface'), MVCap-style metadata (mvcap_metadata, image_caption_metadata), batch 512 + 256,
         the official tuning (AdamW 5e-5 stepped per epoch, LoRA r8 on q|k|v, rotations to ±90°, the max step on
         augmented images, diagonal ITC targets, an unclamped temperature), 80 OpenAI templates; evaluated at
         224 px. Set base_path, bpe_vocab_path and the metadata paths.

Results: results.json metrics zero_shot_top1[model][split] (a variant's: the mean over its tuning seeds),
zero_shot_top1_per_seed, zero_shot_top5, targets, trainable_parameters, splits, units, gates;
zero_shot_top1.{md,csv,png}, multiview_grid.png, timings.json. History: docs/results/omniview.md
"""

import ml_collections

from robust_jax.core.config import new_config

PRESETS = ("tiny", "cpu", "paper")
ALL_VARIANTS = ("ovt", "itc_only", "random_views", "lora_only", "viformer_only", "full_ft")


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
    c, preset = new_config("omniview", preset, PRESETS, num_steps=1200, batch_size=64, learning_rate=5e-3,
                           log_every=50, checkpoint_every=200)
    # data: the procedural multi-view set (evaluation always; tuning with tune_data='procedural')
    c.num_objects_per_category = 40
    c.views_per_object = 16
    c.image_size = 32
    c.canonical_fraction = 0.5
    c.heldout_fraction = 0.25
    c.data_cache_dir = ""  # '' = $ROBUST_JAX_CACHE/multiview or ~/.cache/robust_jax/multiview
    c.drop_colour_probability = 0.3  # captions without the colour word, in pre-training and tuning
    c.category_free_fraction = 0.5  # share of the procedural tuning set's OOD views captioned "a photo of a red X"
    c.headline_view_kinds = ("below", "above", "rolled")  # the "viewpoint_ood" figure's kinds; each kind has its own
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
    c.pretrain_rotation_degrees = 30.0  # also rotated by up to this many degrees either way, as tuning rotates
    c.ceiling = True  # the gate's ceiling: the same CLIP pre-trained on every view too (base_source 'pretrain' only)
    c.ceiling_num_steps = 0  # 0: as many epochs as the base (pretrain_num_steps / canonical_fraction)
    # stage 2: tuning
    c.variants = ALL_VARIANTS
    c.tuning_seeds = 2  # each variant tuned with seeds seed .. seed + tuning_seeds - 1 (one base); units: their mean
    c.tune_data = "procedural"  # 'procedural' | 'mvcap'
    c.mvcap_metadata = ""  # {path, caption, obj_id, img_id} records (tune_data='mvcap')
    c.image_caption_metadata = ""  # {path, caption} records: the 2D pairs (tune_data='mvcap')
    c.tune_view_kinds = ("below", "above", "behind", "rolled")  # canonical views are always tuned on
    c.batch_size_2d = 32  # 2D pairs per batch, besides batch_size multi-view pairs (2:1 as in the paper)
    c.steps_per_epoch = 60  # steps between max steps; 0 = one pass over the multi-view pairs
    c.end_learning_rate = 1e-6
    c.lr_schedule_unit = "epoch"  # the cosine's rate changes every 'step', or every 'epoch' (the official code)
    c.max_step_augment = True  # the max step embeds augmented images (the official code) or the images as they are
    c.itc_targets = "diagonal"  # each image's own caption (the official), or 'same_caption': identical ones too
    c.clamp_logit_scale = True  # temperature capped at 100 (CLIP's rule); the official tuning code does not clamp
    c.weight_decay = 0.05
    c.gradient_clip_norm = 1.0
    c.vi_weight = 1.0  # lambda
    c.margin = 0.3
    c.num_neighbours = 5
    c.num_hard_views = 5  # K
    c.max_views_per_object = 100
    c.max_step_batch_size = 256
    c.max_rotation_degrees = 30.0  # 90 in the official code; the cpu base is pre-trained with 30
    c.max_translation = 0.1
    c.lora_rank = 32  # 8 in the official code
    c.lora_alpha = 32.0
    c.lora_targets = "blocks"  # every kernel of the vision blocks, or 'qkv': their q|k|v kernels (the official)
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
        c.tuning_seeds = 1
        c.lora_rank = 8
        c.lora_alpha = 8.0
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
        c.end_learning_rate = 1e-7
        c.num_steps = 30_000
        c.tuning_seeds = 1
        c.category_free_fraction = 0.0  # MVCap's captions are as its metadata has them
        c.max_rotation_degrees = 90.0
        c.lora_rank = 8
        c.lora_alpha = 8.0
        c.lora_targets = "qkv"
        c.clamp_logit_scale = False
        c.steps_per_epoch = 0
        c.checkpoint_every = 1000
        c.log_every = 100
        c.viformer_mlp_dim = 2048
        c.prompt_templates = "openai_imagenet_80"
        c.eval_batch_size = 512
    return c

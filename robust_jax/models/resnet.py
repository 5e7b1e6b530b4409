"""ResNets for randomized smoothing: the CIFAR ResNet of He et al. (2016, §4.2) and the ImageNet ResNet-50.

Both take NHWC images in [0, 1]; the per-channel normalisation (x - mean) / std is the model's first layer, so a
smoothed classifier adds its Gaussian noise to the raw [0, 1] input (Cohen et al. do the same).

Conventions (chosen so torch checkpoints map one to one and parameter counts match the published figures):
- Convolutions have no bias and are each followed by BatchNorm; padding is symmetric k // 2 as in torch (not XLA's
  'SAME', which pads stride-2 convolutions asymmetrically).
- BatchNorm: `momentum=0.9` (Flax's decay of the running average, i.e. torch's momentum 0.1), `epsilon=1e-5`.
  Flax keeps the biased batch variance in the running average where torch keeps the unbiased one; the difference is
  a factor n / (n - 1) with n = batch x height x width, negligible for training from scratch.
- CIFAR shortcut: where the shape changes (the first block of stages 2 and 3) a 1x1 stride-2 convolution + BN
  projects the input ("option B" of He et al.). This is what Cohen et al.'s CIFAR ResNet-110 uses; it gives
  272,474 parameters for ResNet-20 and 1,730,714 for ResNet-110 (He et al. quote 0.27M and 1.7M), whereas the
  parameter-free zero-padding "option A" of the paper would give slightly fewer. Identity shortcuts elsewhere.
- ResNet-50: torchvision's v1.5, the stride of a down-sampling bottleneck sits on its 3x3 convolution;
  25,557,032 parameters with 1000 classes.

Variables: `params` and `batch_stats`. `model.apply(variables, x)` is evaluation (running statistics);
`model.apply(variables, x, train=True, mutable=['batch_stats'])` is training and returns the new statistics.

For inference, `fold_batch_norm(model, variables)` folds every BatchNorm into the convolution before it, giving a
model whose forward pass is convolution + bias + ReLU only. `fast_inference(model, variables)` does that and returns
`(apply_fn, params)` ready for the smoothing API (optionally computing in bfloat16); it is what
experiments/benchmarks/certify_throughput.py measures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5

# torchvision / He et al. initialise convolutions with Kaiming normal in fan-out mode.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ConvBN(nn.Module):
    """Convolution without bias followed by BatchNorm; with `folded=True`, a convolution with bias and no BN.

    The folded form holds the same function once `fold_batch_norm` has merged the BN statistics into the kernel.
    Sub-module names ('conv', 'bn') are what `fold_batch_norm` looks for.
    """

    features: int
    kernel_size: int
    strides: int = 1
    folded: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array, train: bool) -> jax.Array:
        pad = self.kernel_size // 2
        y = nn.Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            strides=(self.strides, self.strides),
            padding=((pad, pad), (pad, pad)),
            use_bias=self.folded,
            kernel_init=conv_kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(x_BxHxWxC)
        if self.folded:
            return y
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=BATCH_NORM_MOMENTUM,
            epsilon=BATCH_NORM_EPSILON,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="bn",
        )(y)


def _normalise(images_BxHxWxC: jax.Array, mean: Sequence[float], std: Sequence[float], dtype: Dtype) -> jax.Array:
    if images_BxHxWxC.ndim != 4 or images_BxHxWxC.shape[-1] != len(mean):
        raise ValueError(
            f"images must be NHWC with {len(mean)} channels (the length of mean/std); got shape {images_BxHxWxC.shape}"
        )
    mean_C = jnp.asarray(mean, jnp.float32)
    std_C = jnp.asarray(std, jnp.float32)
    return ((images_BxHxWxC.astype(jnp.float32) - mean_C) / std_C).astype(dtype)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; projection shortcut (1x1 conv + BN) when the stride or the width changes."""

    features: int
    strides: int = 1
    folded: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array, train: bool) -> jax.Array:
        kw = dict(folded=self.folded, dtype=self.dtype, param_dtype=self.param_dtype)
        y = nn.relu(ConvBN(self.features, 3, self.strides, name="conv_bn1", **kw)(x_BxHxWxC, train))
        y = ConvBN(self.features, 3, name="conv_bn2", **kw)(y, train)
        shortcut = x_BxHxWxC
        if self.strides != 1 or x_BxHxWxC.shape[-1] != self.features:
            shortcut = ConvBN(self.features, 1, self.strides, name="shortcut", **kw)(x_BxHxWxC, train)
        return nn.relu(y + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride: torchvision v1.5), 1x1 expand to 4x `features`; projection shortcut."""

    features: int
    strides: int = 1
    folded: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    expansion = 4

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array, train: bool) -> jax.Array:
        kw = dict(folded=self.folded, dtype=self.dtype, param_dtype=self.param_dtype)
        out_features = self.features * self.expansion
        y = nn.relu(ConvBN(self.features, 1, name="conv_bn1", **kw)(x_BxHxWxC, train))
        y = nn.relu(ConvBN(self.features, 3, self.strides, name="conv_bn2", **kw)(y, train))
        y = ConvBN(out_features, 1, name="conv_bn3", **kw)(y, train)
        shortcut = x_BxHxWxC
        if self.strides != 1 or x_BxHxWxC.shape[-1] != out_features:
            shortcut = ConvBN(out_features, 1, self.strides, name="shortcut", **kw)(x_BxHxWxC, train)
        return nn.relu(y + shortcut)


class CifarResNet(nn.Module):
    """He et al. (2016) §4.2: 3x3 conv 16, three stages of n basic blocks (16, 32, 64), average pool, dense.

    depth = 6n + 2 (20, 32, 44, 56, 110, ...). Returns float32 logits of shape (batch, num_classes).
    """

    depth: int = 110
    num_classes: int = 10
    mean: Sequence[float] = CIFAR10_MEAN
    std: Sequence[float] = CIFAR10_STD
    widths: Sequence[int] = (16, 32, 64)
    folded: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        if not isinstance(self.depth, int) or self.depth < 8 or (self.depth - 2) % 6 != 0:
            raise ValueError(f"depth={self.depth!r} is not allowed; the CIFAR ResNet needs depth = 6n + 2 with n >= 1")
        if self.num_classes < 1:
            raise ValueError(f"num_classes={self.num_classes!r} must be >= 1")
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean={self.mean!r} and std={self.std!r} must have the same length")
        super().__post_init__()

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6

    @nn.compact
    def __call__(self, images_BxHxWxC: jax.Array, train: bool = False) -> jax.Array:
        if train and self.folded:
            raise ValueError("train=True is not allowed for a model with folded BatchNorm (it is inference only)")
        kw = dict(folded=self.folded, dtype=self.dtype, param_dtype=self.param_dtype)
        x = _normalise(images_BxHxWxC, self.mean, self.std, self.dtype)
        x = nn.relu(ConvBN(self.widths[0], 3, name="stem", **kw)(x, train))
        for stage, width in enumerate(self.widths):
            for block in range(self.blocks_per_stage):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(width, strides, name=f"stage{stage + 1}_block{block + 1}", **kw)(x, train)
        features_BxD = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(features_BxD)
        return logits.astype(jnp.float32)


class ImageNetStem(nn.Module):
    """7x7 stride-2 convolution (64) + BN + ReLU, then 3x3 stride-2 max pooling with padding 1 (as torch)."""

    features: int = 64
    folded: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array, train: bool) -> jax.Array:
        x = ConvBN(self.features, 7, 2, folded=self.folded, dtype=self.dtype, param_dtype=self.param_dtype,
                   name="conv_bn")(x_BxHxWxC, train)
        x = nn.relu(x)
        # Flax pads max pooling with -inf, like torch's MaxPool2d(3, 2, padding=1).
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class ImageNetResNet(nn.Module):
    """The ImageNet ResNet (torchvision v1.5): stem, four stages (64, 128, 256, 512 base widths), pool, dense.

    `block='bottleneck'` with stage_sizes (3, 4, 6, 3) is ResNet-50; `block='basic'` with (2, 2, 2, 2) is ResNet-18.
    """

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    block: str = "bottleneck"
    num_classes: int = 1000
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    folded: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        if self.block not in ("basic", "bottleneck"):
            raise ValueError(f"block={self.block!r} is not allowed; allowed: 'basic', 'bottleneck'")
        if len(self.stage_sizes) != 4 or any(n < 1 for n in self.stage_sizes):
            raise ValueError(f"stage_sizes={self.stage_sizes!r} must be four block counts >= 1")
        if self.num_classes < 1:
            raise ValueError(f"num_classes={self.num_classes!r} must be >= 1")
        super().__post_init__()

    @nn.compact
    def __call__(self, images_BxHxWxC: jax.Array, train: bool = False) -> jax.Array:
        if train and self.folded:
            raise ValueError("train=True is not allowed for a model with folded BatchNorm (it is inference only)")
        kw = dict(folded=self.folded, dtype=self.dtype, param_dtype=self.param_dtype)
        block_cls = Bottleneck if self.block == "bottleneck" else BasicBlock
        x = _normalise(images_BxHxWxC, self.mean, self.std, self.dtype)
        x = ImageNetStem(name="stem", **kw)(x, train)
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = block_cls(64 * 2**stage, strides, name=f"stage{stage + 1}_block{block + 1}", **kw)(x, train)
        features_BxD = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(features_BxD)
        return logits.astype(jnp.float32)


def resnet20(num_classes: int = 10, **kwargs) -> CifarResNet:
    return CifarResNet(depth=20, num_classes=num_classes, **kwargs)


def resnet110(num_classes: int = 10, **kwargs) -> CifarResNet:
    """The base classifier of Cohen et al. on CIFAR-10."""
    return CifarResNet(depth=110, num_classes=num_classes, **kwargs)


def resnet18(num_classes: int = 1000, **kwargs) -> ImageNetResNet:
    return ImageNetResNet(stage_sizes=(2, 2, 2, 2), block="basic", num_classes=num_classes, **kwargs)


def resnet50(num_classes: int = 1000, **kwargs) -> ImageNetResNet:
    """The base classifier of Cohen et al. on ImageNet."""
    return ImageNetResNet(stage_sizes=(3, 4, 6, 3), block="bottleneck", num_classes=num_classes, **kwargs)


# ------------------------------------------------------------------------------------------- BatchNorm folding


def _fold_tree(params: Mapping[str, Any], stats: Mapping[str, Any], path: str) -> dict[str, Any]:
    folded: dict[str, Any] = {}
    if "bn" in params:
        if "conv" not in params:
            raise ValueError(f"BatchNorm at {path}/bn has no convolution 'conv' next to it to fold into")
        if "bn" not in stats:
            raise ValueError(f"batch_stats has no entry for {path}/bn; pass the variables with their batch_stats")
        if set(params) - {"conv", "bn"}:
            extra = sorted(set(params) - {"conv", "bn"})
            raise ValueError(f"unexpected parameters next to a ConvBN at {path}: {extra}")
        kernel_HxWxIxO = params["conv"]["kernel"]
        bn, bn_stats = params["bn"], stats["bn"]
        # BN(conv(x)) = s * (conv(x) - mean) + bias, s = scale / sqrt(var + eps): scale the kernel's output channels.
        kernel_dtype = kernel_HxWxIxO.dtype
        s_O = bn["scale"].astype(jnp.float32) * jax.lax.rsqrt(bn_stats["var"].astype(jnp.float32) + BATCH_NORM_EPSILON)
        folded["conv"] = {
            "kernel": (kernel_HxWxIxO.astype(jnp.float32) * s_O).astype(kernel_dtype),
            "bias": (bn["bias"].astype(jnp.float32) - bn_stats["mean"].astype(jnp.float32) * s_O).astype(kernel_dtype),
        }
        return folded
    for name, child in params.items():
        if isinstance(child, Mapping) and not ("kernel" in child or "scale" in child or "embedding" in child):
            folded[name] = _fold_tree(child, stats.get(name, {}), f"{path}/{name}")
        else:
            folded[name] = child
    return folded


def fold_batch_norm(model: CifarResNet | ImageNetResNet, variables: Mapping[str, Any]):
    """Fold every BatchNorm (with its running statistics) into the convolution before it.

    Returns `(folded_model, folded_variables)`: `folded_model.apply(folded_variables, x)` equals
    `model.apply(variables, x)` in evaluation mode (up to float rounding), with convolution + bias in place of
    convolution + BN. The folded model is for inference only and has no `batch_stats`.
    """
    if not isinstance(model, (CifarResNet, ImageNetResNet)):
        raise ValueError(f"model must be a CifarResNet or ImageNetResNet; got {type(model).__name__}")
    if model.folded:
        raise ValueError("model is already folded (folded=True)")
    if "params" not in variables or "batch_stats" not in variables:
        raise ValueError(f"variables must hold 'params' and 'batch_stats'; got keys {sorted(variables)}")
    # One compiled function for the whole tree (rather than a few eager ops per layer); keeps the arrays' shardings.
    fold = jax.jit(lambda params, stats: _fold_tree(params, stats, "params"))
    folded_params = fold(variables["params"], variables["batch_stats"])
    return model.clone(folded=True), {"params": folded_params}


# Rows per forward pass inside fast_inference on a single CPU device: the first stage's activations for 16 CIFAR
# images (16 x 32 x 32 x 16 floats, 1 MB) stay in cache, where a batch of 400 (26 MB) does not; its 16-channel
# convolutions are the slowest part of the network. ResNet-110 float32 samples per CPU-second on the project's 2-core
# EPYC under load (experiments/benchmarks/certify_throughput.py has the setting), folded, over several runs: whole
# batch of 400 111, slices of 100 121, of 50 117-127, of 25 119, of 16 122-123 (the unfolded model: 101-110).
CPU_BATCH_CHUNK = 16


def _chunked(apply_fn, batch_chunk: int):
    """apply_fn evaluated on consecutive slices of at most batch_chunk rows (lax.map), results concatenated.

    Every row goes through the same function, so the outputs equal apply_fn's on the whole batch up to float
    rounding. The batch is cut into the fewest slices of at most batch_chunk rows, of equal size, padding at most
    (slices - 1) rows with copies of the last row.
    """

    def apply_in_chunks(params, images):
        batch = images.shape[0]
        if batch <= batch_chunk:
            return apply_fn(params, images)
        num_chunks = -(-batch // batch_chunk)
        rows = -(-batch // num_chunks)
        padding = num_chunks * rows - batch
        if padding:
            images = jnp.concatenate([images, jnp.repeat(images[-1:], padding, axis=0)], axis=0)
        outputs = jax.lax.map(lambda chunk: apply_fn(params, chunk),
                              images.reshape(num_chunks, rows, *images.shape[1:]))
        return outputs.reshape(num_chunks * rows, *outputs.shape[2:])[:batch]

    return apply_in_chunks


def fast_inference(
    model: CifarResNet | ImageNetResNet,
    variables: Mapping[str, Any],
    *,
    dtype: Dtype = jnp.float32,
    batch_chunk: int | None | str = "auto",
):
    """`(apply_fn, params)` for evaluation: BatchNorm folded, computing in `dtype`; apply_fn(params, images) -> logits.

    The function computed equals `model.apply(variables, images)` (evaluation mode) up to rounding in float32.
    `dtype=jnp.bfloat16` computes convolutions and activations in bfloat16 (parameters stay float32 and are cast
    inside, the logits come back float32). For randomized smoothing that is a different, equally valid base classifier:
    the certificate holds for whatever function is evaluated, but its predictions can differ from the float32 model's
    on inputs near a decision boundary (see the benchmark's agreement check before relying on it).

    `batch_chunk`: evaluate large batches in slices of at most this many rows (same function, better cache use on CPU).
    'auto' uses CPU_BATCH_CHUNK when JAX runs on a single CPU device and whole batches otherwise (on accelerators
    and on a multi-device mesh, where each device's share of the batch is small already); None never slices.

    `apply_fn` is one function object, so passing the same `apply_fn` to `certify` again reuses its compiled step.
    """
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        raise ValueError(f"dtype={dtype.name!r} is not allowed; allowed: 'float32', 'bfloat16'")
    if batch_chunk == "auto":
        single_cpu = jax.default_backend() == "cpu" and jax.device_count() == 1
        batch_chunk = CPU_BATCH_CHUNK if single_cpu else None
    elif batch_chunk is not None and (isinstance(batch_chunk, bool) or not isinstance(batch_chunk, int)
                                      or batch_chunk < 1):
        raise ValueError(f"batch_chunk={batch_chunk!r} is not allowed; allowed: 'auto', None or an int >= 1")
    folded_model, folded_variables = fold_batch_norm(model, variables)
    apply_fn = folded_model.clone(dtype=dtype).apply
    if batch_chunk is not None:
        apply_fn = _chunked(apply_fn, batch_chunk)
    return apply_fn, folded_variables

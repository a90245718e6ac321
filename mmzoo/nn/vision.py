"""Image encoders for captioning and retrieval: ResNets, a small CNN, precomputed features.

Every encoder returns the same thing, `VisualFeatures(pooled, regions, mask)`,
whatever its source, so a captioner reads one format:

  pooled   <float>[batch, dim]            one vector per image (Show and Tell, VSE)
  regions  <float>[batch, regions, dim]   what attention looks at (Show, Attend and Tell:
                                          a feature grid flattened row-major, h * w
                                          regions; Up-Down: detector boxes)
  mask     <bool>[batch, regions]         True for real regions, False for padding

The ResNets are torchvision's (He et al., 2016, "Deep Residual Learning for
Image Recognition"), layer for layer, so that its ImageNet weights load with
`resnet_from_torch` / `load_torch_resnet`: a 7x7/2 stem conv without bias,
BN, ReLU, a 3x3/2 max-pool with padding 1, four stages of BasicBlocks
(ResNet-18/34) or Bottlenecks (ResNet-50/101/152, stride on the 3x3 conv as
torchvision's "v1.5"), then a global average pool. Inputs are NHWC,
`<float32>[batch, height, width, 3]`, already normalised (for torchvision's
weights: ImageNet mean and std, `mmzoo.data.images.normalize`). A 224x224
image gives a 7x7x2048 grid on ResNet-50; `num_stages=3` stops after conv4
and gives the 14x14x1024 grid Xu et al. (2015) attend over.

BatchNorm is PyTorch's (`BatchNorm`): in training it normalises with the
batch's biased variance and moves the running variance towards the unbiased
one, eps 1e-5, running averages updated with weight 0.1 on the batch
(flax-style `momentum=0.9`). Under `jit` with a batch sharded over devices the
statistics are those of the global batch, as synchronised BN.

`Encoder` wraps a backbone for use inside a model: `frozen=True` stops
gradients at its outputs and keeps BN on its running averages (no update)
even when training; `frozen=False` fine-tunes it, BN following `train`. It
shares its backbone's variables (`nn.share_scope`), so the variables of a
`ResNet`, e.g. from `resnet_from_torch`, are also those of
`build_encoder("resnet50")`.

Pretrained weights. Convert a torchvision `.pth` to `.npz` once, with torch:

  python -c "import sys, numpy as np, torch; np.savez(sys.argv[2], **{k: v.numpy() for k, v \
in torch.load(sys.argv[1], map_location='cpu').items()})" resnet50-0676ba61.pth resnet50.npz

then `variables = load_torch_resnet("resnet50.npz", 50)`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mmzoo.errors import InputError

# depth -> (block kind, blocks per stage), as torchvision's resnet18 ... resnet152.
RESNET_LAYOUTS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)
EXPANSION = {"basic": 1, "bottleneck": 4}
BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # flax convention: weight of the old running average (torch's 0.1)

# torchvision's init: kaiming normal, fan_out, for ReLU.
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class VisualFeatures(NamedTuple):
  """The common output of every image encoder.

  Attributes:
    pooled: `<float>[batch, dim]`, one vector per image.
    regions: `<float>[batch, regions, dim]`; zero where `mask` is False.
    mask: `<bool>[batch, regions]`, True for real regions.
  """

  pooled: jax.Array
  regions: jax.Array
  mask: jax.Array


class BackboneOutput(NamedTuple):
  """What a CNN backbone computes.

  Attributes:
    pooled: `<float>[batch, channels]`, the global average of `grid`.
    grid: `<float>[batch, height', width', channels]`, the last stage's features.
    logits: `<float>[batch, classes]` from the classifier head, or None without one.
  """

  pooled: jax.Array
  grid: jax.Array
  logits: jax.Array | None = None


class BatchNorm(nn.Module):
  """PyTorch's BatchNorm over the last axis of `<float>[..., features]`.

  Training (`use_running_average=False`) normalises with the batch mean and
  biased variance over all axes but the last and updates the `batch_stats`
  collection (`mean`, `var`; it must be mutable) towards the batch mean and
  the *unbiased* variance, as `torch.nn.BatchNorm*d` does; evaluation
  normalises with the running averages. Statistics are computed in float32
  whatever `dtype`. Variable names are those of `flax.linen.BatchNorm`.

  Attributes:
    momentum: weight of the old running average (0.9 = torch's momentum 0.1).
    epsilon: added to the variance.
    dtype: the output dtype.
    scale_init: init of the scale (gamma); zeros for zero-init residuals.
  """

  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPS
  dtype: Any = jnp.float32
  scale_init: nn.initializers.Initializer = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
    features = x.shape[-1]
    scale = self.param("scale", self.scale_init, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    x32 = x.astype(jnp.float32)
    if use_running_average:
      mean, var = running_mean.value, running_var.value
    else:
      count = x.size // features
      if count < 2:
        raise ValueError(f"BatchNorm in training needs more than one value per channel; got "
                         f"input of shape {x.shape}")
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x32, axes)
      var = jnp.mean(jnp.square(x32 - mean), axes)  # two-pass: no cancellation
      if not self.is_initializing():
        m = self.momentum
        unbiased = jax.lax.stop_gradient(var) * (count / (count - 1))
        running_mean.value = m * running_mean.value + (1 - m) * jax.lax.stop_gradient(mean)
        running_var.value = m * running_var.value + (1 - m) * unbiased
    y = (x32 - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias
    return y.astype(self.dtype)


def _conv(features: int, kernel: int, strides: int, dtype: Any, name: str) -> nn.Conv:
  """A bias-free conv padded by `(kernel - 1) // 2` on every side, as torchvision's."""
  pad = (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), (strides, strides), padding=((pad, pad), (pad, pad)),
                 use_bias=False, dtype=dtype, kernel_init=_CONV_INIT, name=name)


class ResidualBlock(nn.Module):
  """torchvision's BasicBlock (two 3x3 convs) or Bottleneck (1x1, 3x3, 1x1).

  Child names follow torchvision's (`conv1`, `bn1`, ..., `downsample_conv`,
  `downsample_bn` for `downsample.0/1`), which `resnet_from_torch` relies on.

  Attributes:
    kind: "basic" or "bottleneck".
    width: channels of the 3x3 conv(s); the block outputs `width * expansion`.
    strides: 1, or 2 for the first block of stages 2-4 (on the 3x3 conv).
    downsample: project the shortcut with a strided 1x1 conv + BN.
    zero_init_residual: init the last BN's scale to zero (torchvision's option).
  """

  kind: str
  width: int
  strides: int = 1
  downsample: bool = False
  zero_init_residual: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """`<float>[batch, h, w, in]` -> `<float>[batch, h / strides, w / strides, out]`."""
    eval_bn = not train
    last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    if self.kind == "basic":
      convs = [(self.width, 3, self.strides), (self.width, 3, 1)]
    else:
      convs = [(self.width, 1, 1), (self.width, 3, self.strides),
               (self.width * EXPANSION["bottleneck"], 1, 1)]
    y = x
    for i, (features, kernel, strides) in enumerate(convs, start=1):
      y = _conv(features, kernel, strides, self.dtype, f"conv{i}")(y)
      last = i == len(convs)
      y = BatchNorm(dtype=self.dtype, scale_init=last_scale if last else nn.initializers.ones,
                    name=f"bn{i}")(y, eval_bn)
      if not last:
        y = nn.relu(y)
    shortcut = x
    if self.downsample:
      shortcut = _conv(y.shape[-1], 1, self.strides, self.dtype, "downsample_conv")(x)
      shortcut = BatchNorm(dtype=self.dtype, name="downsample_bn")(shortcut, eval_bn)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """torchvision's ResNet-18/34/50/101/152 on NHWC images.

  Attributes:
    depth: 18, 34, 50, 101 or 152.
    num_stages: residual stages kept (1-4): 4 is the full network (a 1/32
      grid), 3 stops after conv4 (a 1/16 grid: 14x14 at 224).
    num_classes: size of the `fc` classifier head on the pooled vector, or
      None for no head (needs `num_stages=4`).
    zero_init_residual: init each block's last BN scale to zero.
    dtype: compute dtype (e.g. bfloat16); parameters and BN statistics stay float32.
  """

  depth: int = 50
  num_stages: int = 4
  num_classes: int | None = None
  zero_init_residual: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> BackboneOutput:
    """Runs the network.

    Args:
      images: `<float32>[batch, height, width, 3]`, normalised.
      train: BN on batch statistics, updating `batch_stats` (pass
        `mutable=["batch_stats"]`); else BN on the running averages.

    Returns:
      `BackboneOutput(pooled <float>[batch, C], grid <float>[batch, h, w, C],
      logits <float>[batch, num_classes] or None)`, with C = 512 (ResNet-18/34)
      or 2048 (ResNet-50+) at `num_stages=4`, and h = ceil(height / 32) there.
    """
    if self.depth not in RESNET_LAYOUTS:
      raise ValueError(f"ResNet depth {self.depth} is not one of {sorted(RESNET_LAYOUTS)}")
    if not 1 <= self.num_stages <= 4:
      raise ValueError(f"num_stages must be 1 to 4, not {self.num_stages}")
    if self.num_classes is not None and self.num_stages != 4:
      raise ValueError("a classifier head (num_classes) needs all 4 stages")
    _check_images(images)
    kind, blocks = RESNET_LAYOUTS[self.depth]
    x = images.astype(self.dtype)
    x = _conv(64, 7, 2, self.dtype, "conv1")(x)
    x = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(x, not train))
    # Padding counts as -inf, as torch's MaxPool2d(3, 2, padding=1).
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    channels = 64
    for stage in range(self.num_stages):
      width = STAGE_WIDTHS[stage]
      for block in range(blocks[stage]):
        strides = 2 if stage > 0 and block == 0 else 1
        out = width * EXPANSION[kind]
        x = ResidualBlock(kind, width, strides, downsample=strides != 1 or channels != out,
                          zero_init_residual=self.zero_init_residual, dtype=self.dtype,
                          name=f"layer{stage + 1}_{block}")(x, train)
        channels = out
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
    logits = None
    if self.num_classes is not None:
      logits = _torch_linear(self.num_classes, channels, self.dtype, "fc")(pooled)
    return BackboneOutput(pooled, x, logits)


def _torch_linear(features: int, fan_in: int, dtype: Any, name: str) -> nn.Dense:
  """A Dense initialised as torch's nn.Linear: weight and bias U(-1/sqrt(fan_in), ...)."""
  bound = 1.0 / np.sqrt(fan_in)

  def bias_init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return nn.Dense(features, dtype=dtype, name=name,
                  kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                  bias_init=bias_init)


class SmallCNN(nn.Module):
  """A small conv-BN-ReLU network for the 64x64 shapes world, quick on a CPU.

  Each layer is a 3x3 conv (no bias), BN and ReLU; the defaults turn 64x64
  images into an 8x8x128 grid.

  Attributes:
    features: channels of each layer.
    strides: stride of each layer (same length as `features`).
    dtype: compute dtype; parameters and BN statistics stay float32.
  """

  features: Sequence[int] = (32, 64, 128, 128)
  strides: Sequence[int] = (2, 2, 2, 1)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> BackboneOutput:
    """`<float32>[batch, 64, 64, 3]` (normalised) -> pooled `[batch, C]`, grid `[batch, 8, 8, C]`.

    `train` as in `ResNet`.
    """
    if len(self.features) != len(self.strides):
      raise ValueError(f"SmallCNN: {len(self.features)} features but {len(self.strides)} strides")
    _check_images(images)
    x = images.astype(self.dtype)
    for i, (features, strides) in enumerate(zip(self.features, self.strides, strict=True)):
      x = _conv(features, 3, strides, self.dtype, f"conv{i}")(x)
      x = nn.relu(BatchNorm(dtype=self.dtype, name=f"bn{i}")(x, not train))
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
    return BackboneOutput(pooled, x)


def _check_images(images: jax.Array) -> None:
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"expected NHWC RGB images [batch, height, width, 3], got shape "
                     f"{tuple(images.shape)}")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"expected normalised float images, got {images.dtype} (uint8 pixels go "
                     "through mmzoo.data.images.normalize first)")


def grid_features(grid: jax.Array, pooled: jax.Array | None = None) -> VisualFeatures:
  """A feature grid `<float>[batch, h, w, dim]` as `VisualFeatures`.

  Regions are the grid's cells in row-major order (`regions.reshape(batch,
  h, w, dim)` gives the grid back), all valid; `pooled` defaults to their mean.
  """
  batch, height, width, dim = grid.shape
  regions = grid.reshape(batch, height * width, dim)
  if pooled is None:
    pooled = jnp.mean(regions.astype(jnp.float32), axis=1).astype(grid.dtype)
  return VisualFeatures(pooled, regions, jnp.ones((batch, height * width), bool))


def precomputed_features(features: jax.Array, mask: jax.Array | None = None) -> VisualFeatures:
  """Precomputed features of any of three kinds as `VisualFeatures`.

  Args:
    features: a pooled vector `<float>[batch, dim]` (one region, itself), a
      grid `<float>[batch, h, w, dim]` (`grid_features`), or regions
      `<float>[batch, regions, dim]` (e.g. bottom-up detector boxes).
    mask: only with regions: `[batch, regions]`, nonzero/True for real
      regions, or None when all are real.

  Returns:
    `VisualFeatures`; for regions, `pooled` is the mean over real regions
    (zero when an image has none) and padded regions are zeroed.
  """
  features = jnp.asarray(features)
  if features.ndim != 3 and mask is not None:
    raise ValueError(f"a mask goes with regions [batch, regions, dim]; got features of shape "
                     f"{tuple(features.shape)}")
  if features.ndim == 2:
    return VisualFeatures(features, features[:, None, :], jnp.ones((features.shape[0], 1), bool))
  if features.ndim == 4:
    return grid_features(features)
  if features.ndim != 3:
    raise ValueError(f"precomputed features must be [batch, dim], [batch, h, w, dim] or "
                     f"[batch, regions, dim]; got shape {tuple(features.shape)}")
  if mask is None:
    mask = jnp.ones(features.shape[:2], bool)
  mask = jnp.asarray(mask)
  if mask.shape != features.shape[:2]:
    raise ValueError(f"mask of shape {tuple(mask.shape)} does not match regions of shape "
                     f"{tuple(features.shape)}; expected {tuple(features.shape[:2])}")
  mask = mask.astype(bool)
  regions = jnp.where(mask[..., None], features, 0)
  count = jnp.sum(mask, axis=1, keepdims=True).astype(jnp.float32)
  pooled = jnp.sum(regions.astype(jnp.float32), axis=1) / jnp.maximum(count, 1.0)
  return VisualFeatures(pooled.astype(features.dtype), regions, mask)


class Encoder(nn.Module):
  """An image encoder inside a model: a backbone (or none) -> `VisualFeatures`.

  The backbone's variables are the Encoder's own (no extra nesting level), so
  variables made for the backbone, e.g. by `resnet_from_torch`, apply as they are.

  Attributes:
    backbone: a `ResNet`, a `SmallCNN` (anything called as `backbone(images,
      train=...) -> BackboneOutput`), or None for precomputed features.
    frozen: stop gradients at the outputs and keep BN on its running averages
      (never updated). To keep an optimizer's weight decay off frozen
      parameters too, mask them out of it (e.g. `optax.masked`).
  """

  backbone: nn.Module | None = None
  frozen: bool = False

  def setup(self):
    if self.backbone is not None:
      nn.share_scope(self, self.backbone)

  def __call__(self, inputs: jax.Array, mask: jax.Array | None = None,
               train: bool = False) -> VisualFeatures:
    """Encodes a batch.

    Args:
      inputs: with a backbone, normalised images `<float32>[batch, height,
        width, 3]`; without, precomputed features (see `precomputed_features`).
      mask: `[batch, regions]` for precomputed regions only.
      train: fine-tuning BN in training mode (needs `mutable=["batch_stats"]`);
        ignored when frozen.

    Returns:
      `VisualFeatures`.
    """
    if self.backbone is None:
      features = precomputed_features(inputs, mask)
    else:
      if mask is not None:
        raise ValueError("a region mask goes with precomputed features, not with images")
      out = self.backbone(inputs, train=train and not self.frozen)
      features = grid_features(out.grid, out.pooled)
    if self.frozen:
      features = VisualFeatures(jax.lax.stop_gradient(features.pooled),
                                jax.lax.stop_gradient(features.regions), features.mask)
    return features


ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "small_cnn",
            "precomputed")


def build_encoder(name: str, *, frozen: bool = False, **kwargs: Any) -> Encoder:
  """An `Encoder` by name: "resnet18/34/50/101/152", "small_cnn" or "precomputed".

  `kwargs` go to the backbone (`ResNet`: num_stages, num_classes, dtype, ...;
  `SmallCNN`: features, strides, dtype); "precomputed" takes none.
  """
  if name.startswith("resnet") and name[len("resnet"):].isdigit():
    depth = int(name[len("resnet"):])
    if depth in RESNET_LAYOUTS:
      return Encoder(ResNet(depth=depth, **kwargs), frozen=frozen)
  elif name == "small_cnn":
    return Encoder(SmallCNN(**kwargs), frozen=frozen)
  elif name == "precomputed":
    if kwargs:
      raise ValueError(f"the precomputed encoder takes no options, got {sorted(kwargs)}")
    return Encoder(None, frozen=frozen)
  raise ValueError(f"unknown encoder {name!r}; expected one of {', '.join(ENCODERS)}")


# ----------------------------------------------------------------------------
# torchvision weights.

_FLAX_TO_TORCH_LEAF = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def _torch_key(path: tuple[str, ...]) -> str:
  """A flattened variable path, `(collection, *modules, leaf)`, as a torchvision key."""
  collection, *modules, leaf = path
  names = []
  for m in modules:
    m = re.sub(r"^(layer\d+)_(\d+)$", r"\1.\2", m)
    m = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(m, m)
    names.append(m)
  return ".".join(names + [_FLAX_TO_TORCH_LEAF[collection, leaf]])


def _to_torch_layout(value: np.ndarray) -> np.ndarray:
  """Conv kernel `[kh, kw, in, out]` -> `[out, in, kh, kw]`; dense `[in, out]` -> `[out, in]`."""
  if value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
  return value.T if value.ndim == 2 else value


def _from_torch_layout(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  return value.T if value.ndim == 2 else value


def _guess_depth(keys) -> str:
  """' (its keys look like a ResNet-N)', or '' when they look like none."""
  blocks = [len({k.split(".")[1] for k in keys if k.startswith(f"layer{s}.")})
            for s in range(1, 5)]
  kind = "bottleneck" if any(".conv3." in k for k in keys) else "basic"
  for depth, layout in RESNET_LAYOUTS.items():
    if layout == (kind, tuple(blocks)):
      return f" (its keys look like a ResNet-{depth})"
  return ""


def _abstract_variables(module: ResNet) -> dict:
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  return jax.eval_shape(module.init, jax.random.key(0), images)


def resnet_from_torch(state_dict: Mapping[str, Any], depth: int, *, num_stages: int = 4,
                      head: bool = False) -> dict:
  """Variables of `ResNet(depth, num_stages)` from a torchvision ResNet state dict.

  Args:
    state_dict: numpy arrays (or anything `np.asarray` takes) under
      torchvision's names: `conv1.weight`, `bn1.running_mean`,
      `layer1.0.conv1.weight`, `layer1.0.downsample.1.running_var`, `fc.weight`...
      `*.num_batches_tracked` are ignored, as are `fc.*` without `head` and
      the stages past `num_stages`.
    depth: 18, 34, 50, 101 or 152.
    num_stages: stages of the module the variables are for.
    head: keep `fc` as the classifier head (`ResNet(num_classes=fc rows)`).

  Returns:
    `{"params": ..., "batch_stats": ...}` of float32 arrays, for
    `ResNet(depth=depth, num_stages=num_stages, num_classes=classes if head
    else None)` and for `build_encoder(f"resnet{depth}", ...)` alike.

  Raises:
    ValueError: naming the keys that are missing, unexpected or mis-shaped.
  """
  if depth not in RESNET_LAYOUTS:
    raise ValueError(f"ResNet depth {depth} is not one of {sorted(RESNET_LAYOUTS)}")
  what = f"a torchvision ResNet-{depth}" + (f" ({num_stages} stages)" if num_stages != 4 else "")
  num_classes = None
  if head:
    if "fc.weight" not in state_dict:
      raise ValueError(f"state dict lacks ['fc.weight'], needed for the head of {what}")
    num_classes = int(np.shape(state_dict["fc.weight"])[0])
  module = ResNet(depth=depth, num_stages=num_stages, num_classes=num_classes)
  expected = traverse_util.flatten_dict(_abstract_variables(module))
  torch_keys = {_torch_key(path): path for path in expected}

  missing = sorted(k for k in torch_keys if k not in state_dict)
  if missing:
    listed = missing if len(missing) <= 8 else missing[:8] + [f"... {len(missing) - 8} more"]
    raise ValueError(f"state dict lacks {listed} for {what}{_guess_depth(state_dict)}")
  dropped = tuple(f"layer{s}." for s in range(num_stages + 1, 5)) + (() if head else ("fc.",))
  unexpected = sorted(k for k in state_dict if k not in torch_keys
                      and not k.endswith(".num_batches_tracked") and not k.startswith(dropped))
  if unexpected:
    raise ValueError(f"state dict has keys {unexpected} that {what} does not use"
                     f"{_guess_depth(state_dict)}")
  flat = {}
  for key, path in torch_keys.items():
    value = np.asarray(state_dict[key], dtype=np.float32)
    want = _to_torch_layout(np.empty(expected[path].shape, np.float32)).shape
    if value.shape != want:
      raise ValueError(f"{key} has shape {value.shape}, but {what} needs {want}"
                       f"{_guess_depth(state_dict)}")
    flat[path] = jnp.asarray(_from_torch_layout(value))
  return traverse_util.unflatten_dict(flat)


def resnet_to_torch(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The inverse of `resnet_from_torch`: a `ResNet`'s variables under torchvision's names.

  `num_batches_tracked` is not produced (torch's `load_state_dict(...,
  strict=False)` takes the dict without it).
  """
  flat = traverse_util.flatten_dict(dict(variables))
  return {_torch_key(path): _to_torch_layout(np.asarray(value)) for path, value in flat.items()
          if path[0] in ("params", "batch_stats")}


def load_torch_resnet(path: str | os.PathLike, depth: int, **kwargs: Any) -> dict:
  """`resnet_from_torch` on a `.npz` of a torchvision state dict (see the module docstring).

  `kwargs` (num_stages, head) go to `resnet_from_torch`.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise InputError(f"{path}: no such file")
  try:
    data = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise InputError(f"{path}: cannot read as .npz ({e})") from None
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise InputError(f"{path}: a single array, not an .npz of a state dict")
  with data:
    if any(name.endswith("data.pkl") for name in data.files):
      raise InputError(f"{path}: a PyTorch checkpoint, not an .npz; convert it as the "
                       "mmzoo.nn.vision docstring shows")
    state_dict = {name: data[name] for name in data.files}
  return resnet_from_torch(state_dict, depth, **kwargs)

"""Tests for mmzoo.nn.vision: torchvision parity, BatchNorm, freezing, precomputed features.

torchvision is not a dependency, so the parity tests build its ResNet architecture here in
plain torch, with torchvision's module and attribute names, so that `state_dict()` has
torchvision's keys exactly. Its BN statistics are made non-trivial: set from a calibration
batch (so activations stay O(1) through 16 blocks), then perturbed at random, as are the BN
weights and biases.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mmzoo.data.images import normalize
from mmzoo.errors import InputError
from mmzoo.nn.vision import (
  BatchNorm,
  ResNet,
  SmallCNN,
  VisualFeatures,
  build_encoder,
  grid_features,
  load_torch_resnet,
  precomputed_features,
  resnet_from_torch,
  resnet_to_torch,
)

TOL = 1e-4  # max abs difference allowed against torch, float32 on both sides
NUM_CLASSES = 10

# LLVM -O0 compiles a ResNet-50 several times faster; the HLO (so the math) is the same.
jit_o0 = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


@pytest.fixture(scope="module")
def torch():
  torch = pytest.importorskip(
    "torch", reason="torch is not importable; the torchvision parity tests need it"
  )
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield torch
  torch.set_num_threads(threads)


def _torch_resnet(torch, depth: int):
  """torchvision's resnet{depth}(num_classes=NUM_CLASSES), written out; returns the module.

  Its forward returns `(pooled, grid, logits)` rather than only the logits.
  """
  tnn = torch.nn

  class BasicBlock(tnn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
      super().__init__()
      self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
      self.bn1 = tnn.BatchNorm2d(planes)
      self.relu = tnn.ReLU()
      self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn2 = tnn.BatchNorm2d(planes)
      self.downsample = downsample

    def forward(self, x):
      identity = x if self.downsample is None else self.downsample(x)
      out = self.relu(self.bn1(self.conv1(x)))
      out = self.bn2(self.conv2(out))
      return self.relu(out + identity)

  class Bottleneck(tnn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
      super().__init__()
      self.conv1 = tnn.Conv2d(inplanes, planes, 1, bias=False)
      self.bn1 = tnn.BatchNorm2d(planes)
      self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5: stride here
      self.bn2 = tnn.BatchNorm2d(planes)
      self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
      self.bn3 = tnn.BatchNorm2d(planes * 4)
      self.relu = tnn.ReLU()
      self.downsample = downsample

    def forward(self, x):
      identity = x if self.downsample is None else self.downsample(x)
      out = self.relu(self.bn1(self.conv1(x)))
      out = self.relu(self.bn2(self.conv2(out)))
      out = self.bn3(self.conv3(out))
      return self.relu(out + identity)

  class TorchResNet(tnn.Module):
    def __init__(self, block, layers):
      super().__init__()
      self.inplanes = 64
      self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
      self.bn1 = tnn.BatchNorm2d(64)
      self.relu = tnn.ReLU()
      self.maxpool = tnn.MaxPool2d(3, 2, 1)
      self.layer1 = self._make_layer(block, 64, layers[0])
      self.layer2 = self._make_layer(block, 128, layers[1], 2)
      self.layer3 = self._make_layer(block, 256, layers[2], 2)
      self.layer4 = self._make_layer(block, 512, layers[3], 2)
      self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
      self.fc = tnn.Linear(512 * block.expansion, NUM_CLASSES)

    def _make_layer(self, block, planes, blocks, stride=1):
      out = planes * block.expansion
      downsample = None
      if stride != 1 or self.inplanes != out:
        downsample = tnn.Sequential(
          tnn.Conv2d(self.inplanes, out, 1, stride, bias=False), tnn.BatchNorm2d(out)
        )
      layers = [block(self.inplanes, planes, stride, downsample)]
      self.inplanes = out
      layers += [block(out, planes) for _ in range(1, blocks)]
      return tnn.Sequential(*layers)

    def forward(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      grid = self.layer4(self.layer3(self.layer2(self.layer1(x))))
      pooled = torch.flatten(self.avgpool(grid), 1)
      return pooled, grid, self.fc(pooled)

  layouts = {18: (BasicBlock, (2, 2, 2, 2)), 50: (Bottleneck, (3, 4, 6, 3))}
  block, layers = layouts[depth]
  torch.manual_seed(depth)
  model = TorchResNet(block, layers)
  bns = [m for m in model.modules() if isinstance(m, tnn.BatchNorm2d)]
  with torch.no_grad():
    for bn in bns:
      bn.momentum = 1.0  # running stats := this batch's
    model.train()
    model(torch.randn(4, 3, 64, 64))
    gen = torch.Generator().manual_seed(depth + 1)
    last_bns = {id(b.bn3 if isinstance(b, Bottleneck) else b.bn2) for b in model.modules()
                if isinstance(b, (BasicBlock, Bottleneck))}
    for bn in bns:
      n = bn.num_features
      bn.momentum = 0.1
      std = bn.running_var.sqrt()
      bn.running_mean += 0.2 * std * torch.randn(n, generator=gen)
      bn.running_var *= 0.5 + 1.5 * torch.rand(n, generator=gen)
      # Small gammas ending each residual branch, as in trained ResNets, keep the residual
      # stream from growing block after block (to ~300 at the end of a ResNet-50).
      low, high = (0.2, 0.5) if id(bn) in last_bns else (0.5, 1.5)
      bn.weight.copy_(low + (high - low) * torch.rand(n, generator=gen))
      bn.bias.copy_(0.2 * torch.randn(n, generator=gen))
  return model.eval()


def _state_dict(model) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _nchw(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _max_diff(ours, theirs) -> float:
  return float(np.max(np.abs(np.asarray(ours, np.float64) - np.asarray(theirs, np.float64))))


# ----------------------------------------------------------------------------
# 1. Parity with torchvision's architecture through resnet_from_torch.


@pytest.mark.parametrize("depth", [18, 50])
def test_torch_parity_eval(torch, depth):
  model = _torch_resnet(torch, depth)
  state = _state_dict(model)
  assert "layer1.0.bn1.num_batches_tracked" in state
  variables = resnet_from_torch(state, depth, head=True)
  module = ResNet(depth=depth, num_classes=NUM_CLASSES)
  apply = jit_o0(module.apply)
  rng = np.random.default_rng(depth)
  for shape in [(2, 64, 64, 3), (2, 65, 47, 3)]:  # the odd size checks conv/pool padding
    x = rng.normal(size=shape).astype(np.float32)
    with torch.no_grad():
      pooled_t, grid_t, logits_t = (t.numpy() for t in model(torch.from_numpy(_nchw(x))))
    out = apply(variables, jnp.asarray(x))
    grid_t = grid_t.transpose(0, 2, 3, 1)
    assert out.grid.shape == grid_t.shape and out.pooled.shape == pooled_t.shape
    diffs = {
      "pooled": _max_diff(out.pooled, pooled_t),
      "grid": _max_diff(out.grid, grid_t),
      "logits": _max_diff(out.logits, logits_t),
    }
    print(f"ResNet-{depth} {shape}: max |ours - torch| {diffs}, max |grid| {abs(grid_t).max()}")
    assert max(diffs.values()) <= TOL, diffs
    if shape[1] == 64:
      # The same variables drive the Encoder (shared scope), which flattens the grid.
      feats = jit_o0(build_encoder(f"resnet{depth}", num_classes=NUM_CLASSES).apply)(
        variables, jnp.asarray(x)
      )
      regions = np.asarray(out.grid).reshape(2, -1, grid_t.shape[-1])
      np.testing.assert_array_equal(feats.regions, regions)
      np.testing.assert_array_equal(feats.pooled, out.pooled)
      assert feats.mask.shape == feats.regions.shape[:2] and bool(feats.mask.all())


def test_torch_parity_train_mode(torch):
  """Training mode: outputs on batch statistics and every updated running stat, vs torch."""
  model = _torch_resnet(torch, 18)
  variables = resnet_from_torch(_state_dict(model), 18, head=True)
  x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  model.train()
  with torch.no_grad():
    pooled_t, grid_t, _ = model(torch.from_numpy(_nchw(x)))
  after = resnet_from_torch(_state_dict(model), 18, head=True)["batch_stats"]

  apply = functools.partial(ResNet(depth=18, num_classes=NUM_CLASSES).apply, train=True,
                            mutable=["batch_stats"])
  out, updates = jit_o0(apply)(variables, jnp.asarray(x))
  grid_diff = _max_diff(out.grid, grid_t.numpy().transpose(0, 2, 3, 1))
  pooled_diff = _max_diff(out.pooled, pooled_t.numpy())
  ours = traverse_util.flatten_dict(updates["batch_stats"])
  theirs = traverse_util.flatten_dict(after)
  assert ours.keys() == theirs.keys()
  stats_diff = max(_max_diff(ours[k], theirs[k]) for k in ours)
  print(f"ResNet-18 train mode: grid {grid_diff}, pooled {pooled_diff}, stats {stats_diff}")
  assert max(grid_diff, pooled_diff, stats_diff) <= TOL


def test_round_trip_and_shapes():
  module = ResNet(depth=18, num_stages=3)
  variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  variables = jax.tree.map(lambda s: np.random.default_rng(0).normal(size=s.shape), variables)
  state = resnet_to_torch(variables)
  assert "layer3.1.bn2.running_var" in state and "layer2.0.downsample.0.weight" in state
  assert state["conv1.weight"].shape == (64, 3, 7, 7)
  back = resnet_from_torch(state, 18, num_stages=3)
  jax.tree.map(np.testing.assert_allclose, back, jax.tree.map(np.float32, variables))

  # Grids at 224: 7x7x2048 from ResNet-50, 14x14x1024 from its conv4 (Xu et al.).
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  for num_stages, grid in [(4, (1, 7, 7, 2048)), (3, (1, 14, 14, 1024))]:
    encoder = build_encoder("resnet50", num_stages=num_stages, frozen=True)
    feats = jax.eval_shape(encoder.init_with_output, jax.random.key(0), images)[0]
    assert feats.regions.shape == (1, grid[1] * grid[2], grid[3])
    assert feats.pooled.shape == (1, grid[3])


# ----------------------------------------------------------------------------
# 2. Converter errors.


def _resnet18_state() -> dict[str, np.ndarray]:
  module = ResNet(depth=18, num_classes=NUM_CLASSES)
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  state = resnet_to_torch(jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes))
  state["bn1.num_batches_tracked"] = np.array(3)
  return state


def test_converter_errors():
  state = _resnet18_state()
  resnet_from_torch(state, 18)  # fc and num_batches_tracked ignored without a head
  assert resnet_from_torch(state, 18, head=True)["params"]["fc"]["kernel"].shape == (512, 10)

  missing = dict(state)
  del missing["layer1.0.bn1.running_var"]
  with pytest.raises(ValueError, match=r"lacks \['layer1\.0\.bn1\.running_var'\]"):
    resnet_from_torch(missing, 18)

  wrong = dict(state)
  wrong["layer2.0.conv1.weight"] = np.zeros((128, 64, 1, 1), np.float32)
  with pytest.raises(ValueError, match=r"layer2\.0\.conv1\.weight has shape \(128, 64, 1, 1\)"):
    resnet_from_torch(wrong, 18)

  extra = dict(state)
  extra["layer1.0.conv9.weight"] = np.zeros((1,), np.float32)
  with pytest.raises(ValueError, match=r"layer1\.0\.conv9\.weight"):
    resnet_from_torch(extra, 18)

  with pytest.raises(ValueError, match=r"fc\.weight"):
    resnet_from_torch({k: v for k, v in state.items() if not k.startswith("fc.")}, 18, head=True)

  with pytest.raises(ValueError, match=r"look like a ResNet-18"):
    resnet_from_torch(state, 34)


def test_load_torch_resnet(tmp_path):
  state = _resnet18_state()
  path = tmp_path / "resnet18.npz"
  np.savez(path, **state)
  variables = load_torch_resnet(path, 18, head=True)
  assert variables["batch_stats"]["layer4_1"]["bn2"]["var"].shape == (512,)
  with pytest.raises(InputError, match="no such file"):
    load_torch_resnet(tmp_path / "missing.npz", 18)
  np.save(tmp_path / "one.npy", np.zeros(3))
  with pytest.raises(InputError, match="single array"):
    load_torch_resnet(tmp_path / "one.npy", 18)


# ----------------------------------------------------------------------------
# 3. BatchNorm.


def test_batchnorm_train_and_eval():
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, size=(4, 5, 3, 6)).astype(np.float32)
  bn = BatchNorm()
  scale = rng.uniform(0.5, 1.5, size=6).astype(np.float32)
  bias = rng.normal(size=6).astype(np.float32)
  mean0 = rng.normal(size=6).astype(np.float32)
  var0 = rng.uniform(0.5, 2.0, size=6).astype(np.float32)
  variables = {"params": {"scale": scale, "bias": bias},
               "batch_stats": {"mean": mean0, "var": var0}}

  y, updates = bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  flat = x.reshape(-1, 6).astype(np.float64)
  n = flat.shape[0]
  batch_mean = flat.mean(0)
  batch_var = flat.var(0)  # biased: what normalises
  np.testing.assert_allclose(y, (x - batch_mean) / np.sqrt(batch_var + 1e-5) * scale + bias,
                             atol=1e-5)
  stats = updates["batch_stats"]
  np.testing.assert_allclose(stats["mean"], 0.9 * mean0 + 0.1 * batch_mean, rtol=1e-6)
  # torch moves running_var towards the unbiased variance.
  np.testing.assert_allclose(stats["var"], 0.9 * var0 + 0.1 * batch_var * n / (n - 1), rtol=1e-6)

  y_eval = bn.apply(variables, x, use_running_average=True)
  np.testing.assert_allclose(y_eval, (x - mean0) / np.sqrt(var0 + 1e-5) * scale + bias, atol=1e-5)


def test_batchnorm_matches_torch(torch):
  x = np.random.default_rng(1).normal(size=(3, 4, 5, 7)).astype(np.float32)
  tbn = torch.nn.BatchNorm2d(7)
  with torch.no_grad():
    tbn.running_mean.normal_()
    tbn.weight.normal_()
  before = {k: v.numpy().copy() for k, v in tbn.state_dict().items()}
  variables = {"params": {"scale": before["weight"], "bias": before["bias"]},
               "batch_stats": {"mean": before["running_mean"], "var": before["running_var"]}}
  with torch.no_grad():
    y_t = tbn.train()(torch.from_numpy(_nchw(x))).numpy().transpose(0, 2, 3, 1)
  y, updates = BatchNorm().apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  np.testing.assert_allclose(y, y_t, atol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["mean"], tbn.running_mean.numpy(), atol=1e-6)
  np.testing.assert_allclose(updates["batch_stats"]["var"], tbn.running_var.numpy(), atol=1e-6)


def test_batchnorm_single_value_per_channel():
  with pytest.raises(ValueError, match="more than one value per channel"):
    BatchNorm().init(jax.random.key(0), jnp.ones((1, 1, 1, 4)), use_running_average=False)


# ----------------------------------------------------------------------------
# 4. Frozen and fine-tuned encoders; the small CNN.


def _images(batch: int = 4, seed: int = 0) -> jax.Array:
  pixels = np.random.default_rng(seed).integers(0, 256, size=(batch, 64, 64, 3), dtype=np.uint8)
  return normalize(pixels)


@pytest.mark.parametrize("frozen", [True, False])
def test_frozen_and_fine_tuned(frozen):
  encoder = build_encoder("small_cnn", frozen=frozen, features=(8, 16), strides=(2, 2))
  images = _images()
  variables = jax.jit(encoder.init)(jax.random.key(0), images)
  w_regions = jax.random.normal(jax.random.key(1), (4, 256, 16))
  w_pooled = jax.random.normal(jax.random.key(2), (4, 16))

  def loss_fn(params):
    feats, updates = encoder.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                   images, train=True, mutable=["batch_stats"])
    return jnp.sum(feats.regions * w_regions) + jnp.sum(feats.pooled * w_pooled), updates

  grads, updates = jax.jit(jax.grad(loss_fn, has_aux=True))(variables["params"])
  norms = {"/".join(k): float(jnp.linalg.norm(g))
           for k, g in traverse_util.flatten_dict(grads).items()}
  stats_changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), updates["batch_stats"],
                               variables["batch_stats"])
  if frozen:
    assert all(n == 0.0 for n in norms.values()), norms
    assert not any(jax.tree.leaves(stats_changed))
  else:
    assert all(n > 0.0 for n in norms.values()), norms
    assert all(jax.tree.leaves(stats_changed))


def test_small_cnn_jit():
  encoder = build_encoder("small_cnn")
  images = _images(batch=2)
  variables = jax.jit(encoder.init)(jax.random.key(0), images)
  feats = jax.jit(encoder.apply)(variables, images)
  assert isinstance(feats, VisualFeatures)
  assert feats.regions.shape == (2, 64, 128) and feats.pooled.shape == (2, 128)
  assert feats.mask.shape == (2, 64) and feats.mask.dtype == jnp.bool_
  assert np.isfinite(np.asarray(feats.regions)).all()
  grid = jax.jit(SmallCNN().apply)(variables, images).grid
  assert grid.shape == (2, 8, 8, 128)
  np.testing.assert_allclose(feats.regions, np.asarray(grid).reshape(2, 64, 128), atol=1e-6)
  np.testing.assert_allclose(feats.pooled, np.asarray(grid).mean(axis=(1, 2)), atol=1e-5)
  bf16 = jax.jit(build_encoder("small_cnn", dtype=jnp.bfloat16).apply)(variables, images)
  assert bf16.regions.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.float32(bf16.pooled), feats.pooled, atol=0.05, rtol=0.05)
  with pytest.raises(ValueError, match="float"):
    encoder.apply(variables, jnp.zeros((2, 64, 64, 3), jnp.uint8))
  with pytest.raises(ValueError, match="NHWC"):
    encoder.apply(variables, jnp.zeros((2, 3, 64, 64)))


# ----------------------------------------------------------------------------
# 5. Precomputed features.


def test_precomputed_features():
  rng = np.random.default_rng(0)
  encoder = build_encoder("precomputed")
  assert encoder.init(jax.random.key(0), jnp.zeros((2, 5))) == {}

  pooled = rng.normal(size=(2, 5)).astype(np.float32)
  feats = encoder.apply({}, pooled)
  assert feats.pooled.shape == (2, 5) and feats.regions.shape == (2, 1, 5)
  np.testing.assert_array_equal(feats.regions[:, 0], pooled)
  assert feats.mask.shape == (2, 1) and bool(feats.mask.all())

  grid = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  feats = encoder.apply({}, grid)
  assert feats.regions.shape == (2, 12, 5) and feats.mask.shape == (2, 12)
  np.testing.assert_array_equal(feats.regions[:, 4], grid[:, 1, 0])  # row-major
  np.testing.assert_allclose(feats.pooled, grid.mean(axis=(1, 2)), atol=1e-6)
  assert bool(feats.mask.all())

  regions = rng.normal(size=(3, 4, 5)).astype(np.float32)
  mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
  feats = jax.jit(precomputed_features)(regions, mask)
  assert feats.mask.dtype == jnp.bool_
  np.testing.assert_array_equal(feats.mask, mask.astype(bool))
  np.testing.assert_allclose(feats.pooled[0], regions[0, :2].mean(0), atol=1e-6)
  np.testing.assert_allclose(feats.pooled[1], regions[1].mean(0), atol=1e-6)
  np.testing.assert_array_equal(feats.pooled[2], 0.0)  # no regions at all
  np.testing.assert_array_equal(feats.regions[0, 2:], 0.0)
  np.testing.assert_array_equal(feats.regions[1], regions[1])
  unmasked = encoder.apply({}, regions)
  assert bool(unmasked.mask.all())
  np.testing.assert_allclose(unmasked.pooled, regions.mean(1), atol=1e-6)

  with pytest.raises(ValueError, match="does not match"):
    precomputed_features(regions, mask[:, :3])
  with pytest.raises(ValueError, match="mask goes with regions"):
    precomputed_features(pooled, np.ones((2, 1)))
  with pytest.raises(ValueError, match="got shape"):
    precomputed_features(np.zeros(5))
  with pytest.raises(ValueError, match="unknown encoder 'resnet19'"):
    build_encoder("resnet19")
  with pytest.raises(ValueError, match="mask goes with precomputed"):
    build_encoder("small_cnn").init(jax.random.key(0), _images(2), np.ones((2, 64)))


def test_grid_features_keeps_given_pooled():
  grid = jnp.arange(2 * 2 * 2 * 3, dtype=jnp.float32).reshape(2, 2, 2, 3)
  feats = grid_features(grid, pooled=jnp.zeros((2, 3)))
  np.testing.assert_array_equal(feats.pooled, 0.0)

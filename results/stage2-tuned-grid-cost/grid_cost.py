"""Stage-2 head fitting time at the cpu study's shape: the five fixed study heads alone vs with the
three tuned variants (synthetic Gaussian features, 12,356 x 1280, CIFAR-10-LT counts, 30 epochs)."""
import time, numpy as np, torch
from longtail import data as data_module
from longtail.config import Stage2Config
from longtail.data import Arrays, Split
from longtail.decouple import fit_stage2_heads
from longtail.features import Features
from longtail.train import Dataset
torch.set_num_threads(1)
counts = [4950, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
g = torch.Generator().manual_seed(0)
means = 0.05 * torch.randn(10, 1280, generator=g)
ytr = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]); yval = np.repeat(np.arange(10), 50)
draw = lambda y: means[torch.as_tensor(y)] + torch.randn(len(y), 1280, generator=g)
features = Features(draw(ytr)[None], draw(yval), draw(np.repeat(np.arange(10), 100)))
y_train = np.concatenate([ytr, yval]).astype(np.int64)
arrays = Arrays(np.zeros((len(y_train), 1, 1, 3), np.uint8), y_train, np.zeros((0, 1, 1, 3), np.uint8),
                np.zeros(0, np.int64), tuple(map(str, range(10))), "synthetic", "synthetic")
dataset = Dataset(arrays, Split(np.arange(len(ytr)), np.arange(len(ytr), len(y_train)), counts, counts),
                  data_module.CIFAR10_MEAN, data_module.CIFAR10_STD)
fixed = [Stage2Config(loss=l) for l in ("modified-ce", "balanced-softmax", "focal", "class-balanced", "cb-focal")]
tuned = [Stage2Config(loss=l, tune=True) for l in ("focal", "class-balanced", "cb-focal")]
for name, configs in (("fixed (17 heads)", fixed), ("fixed + tuned (59 heads)", fixed + tuned)) * 2:
    started = time.perf_counter()
    fit_stage2_heads(configs, torch.nn.Linear(1280, 10), features, dataset)
    print(f"{name}: {time.perf_counter() - started:.1f} s", flush=True)

"""Decoding speed of the store's decoder against torchvision.io's JPEG decoder, per image, one thread.

Both bring a photo-sized JPEG (``--width`` x ``--height``, default ImageNet's typical 500 x 375,
random smooth content plus noise, quality 90) to a store size S:
- longtail: ``longtail.data.decode_image`` (Pillow: read the file, ``draft`` to the smallest DCT scale
  still covering S, shorter side to S bilinear and antialiased, centre crop), the decoder of every
  image folder, list source and ``longtail predict``;
- torchvision: ``torchvision.io.decode_jpeg`` of the file's bytes (already in memory: reading the
  file is not counted) with EXIF orientation, then an antialiased bilinear resize of the shorter side
  to S (no crop: it would only add time).

The last stdout line is one JSON object with the milliseconds per image of each at each size.

    python benchmarks/decoding.py --images 100 --sizes 64 128 224
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from longtail.data import decode_image
from longtail.hardware import cpu_name


def photos(folder: Path, count: int, width: int, height: int) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        smooth = np.asarray(small.resize((width, height), Image.Resampling.BICUBIC)).astype(np.int16)
        noisy = np.clip(smooth + rng.integers(-20, 21, smooth.shape), 0, 255).astype(np.uint8)
        files.append(folder / f"{i:04d}.jpg")
        Image.fromarray(noisy).save(files[-1], quality=90)
    return files


def torchvision_decode(data: torch.Tensor, size: int) -> torch.Tensor:
    image = decode_jpeg(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    _, height, width = image.shape
    scale = size / min(height, width)
    shape = (max(size, round(height * scale)), max(size, round(width * scale)))
    return F.interpolate(image[None].float(), size=shape, mode="bilinear", antialias=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="JPEG files (default 100)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224], help="store sizes (default 64 128 224)")
    parser.add_argument("--width", type=int, default=500, help="the photos' width (default 500)")
    parser.add_argument("--height", type=int, default=375, help="the photos' height (default 375)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="longtail-decoding-") as folder:
        files = photos(Path(folder), args.images, args.width, args.height)
        data = [torchvision.io.read_file(str(path)) for path in files]
        result = {"longtail_ms": {}, "torchvision_ms": {}}
        for size in args.sizes:
            decode_image(files[0], size, size), torchvision_decode(data[0], size)  # warm-up
            started = time.perf_counter()
            for path in files:
                decode_image(path, size, size)
            result["longtail_ms"][size] = round(1e3 * (time.perf_counter() - started) / len(files), 3)
            started = time.perf_counter()
            for item in data:
                torchvision_decode(item, size)
            result["torchvision_ms"][size] = round(1e3 * (time.perf_counter() - started) / len(files), 3)
            print(
                f"S = {size:3d} px: longtail (Pillow, draft) {result['longtail_ms'][size]:.2f} ms/image, "
                f"torchvision decode_jpeg + resize {result['torchvision_ms'][size]:.2f} ms/image"
            )
    result.update(
        images=args.images,
        photo=[args.width, args.height],
        cpu=f"{cpu_name()}, {os.cpu_count()} cores",
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()

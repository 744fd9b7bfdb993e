#!/usr/bin/env python3
"""Builds tests/data/stereo/ from the Middlebury "Motorcycle" pair shipped in scikit-image.

    pip download --no-deps scikit-image==0.26.0 -d /tmp/skimage
    python tests/stereo/make_data.py /tmp/skimage/scikit_image-0.26.0-*.whl

scikit-image ships the pair 4x down-sampled (741x500 RGB) with ground-truth disparity
(float32, +inf = unknown). Here it is halved again to keep the repository small:
- images: crop to 740x500 (even), average each 2x2 block in float, convert to gray with the
  Rec.601 weights (0.299 R + 0.587 G + 0.114 B, as OpenCV and Pillow "L"), round -> 370x250 u8 PNG;
- disparity: nearest sample (top-left of each 2x2 block) divided by 2; +inf stays +inf;
  written as a Middlebury PFM (little-endian, rows bottom to top).
"""
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np

OUT = Path(__file__).resolve().parents[1] / "data" / "stereo"


def read_member(wheel, name):
    with zipfile.ZipFile(wheel) as z:
        return z.read(f"skimage/data/{name}")


def half_gray(png_bytes):
    bgr = cv2.imdecode(np.frombuffer(png_bytes, np.uint8), cv2.IMREAD_COLOR).astype(np.float64)
    h, w = bgr.shape[0] // 2 * 2, bgr.shape[1] // 2 * 2
    b = bgr[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
    gray = 0.114 * b[..., 0] + 0.587 * b[..., 1] + 0.299 * b[..., 2]
    return np.clip(np.round(gray), 0, 255).astype(np.uint8)


def write_pfm(path, data):
    h, w = data.shape
    with open(path, "wb") as f:
        f.write(f"Pf\n{w} {h}\n-1.0\n".encode())
        f.write(np.ascontiguousarray(data[::-1], dtype="<f4").tobytes())


def main():
    wheel = sys.argv[1]
    OUT.mkdir(parents=True, exist_ok=True)
    for side in ("left", "right"):
        img = half_gray(read_member(wheel, f"motorcycle_{side}.png"))
        cv2.imwrite(str(OUT / f"motorcycle_{side}.png"), img, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    import io
    disp = np.load(io.BytesIO(read_member(wheel, "motorcycle_disp.npz")))["arr_0"].astype(np.float32)
    h, w = disp.shape[0] // 2 * 2, disp.shape[1] // 2 * 2
    gt = disp[:h:2, :w:2] / 2
    gt[~np.isfinite(gt)] = np.inf
    write_pfm(OUT / "motorcycle_disp.pfm", gt)
    print({p.name: p.stat().st_size for p in sorted(OUT.iterdir())})


if __name__ == "__main__":
    main()

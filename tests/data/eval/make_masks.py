#!/usr/bin/env python3
# Run from anywhere: python3 tests/data/eval/make_masks.py  (needs Pillow + numpy)
"""Rasterise the hand-drawn polygons in annotations.json into label masks.

For every image entry a file <name>.mask.png is written next to this script:
8-bit grayscale, same size as the photo, value = 0-based index into the
entry's "labels" list, 255 = ignore / not annotated.

Polygons are painted in the order they are listed, so later polygons
overwrite earlier ones (paint background first, then objects on top).
The label "ignore" paints 255.  If an entry has "ignore_border": N (> 0),
every pixel within N pixels of a boundary between two different labels is
also set to 255, because the drawn borders are only approximate.
"""
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

IGNORE = 255
HERE = os.path.dirname(os.path.abspath(__file__))


def boundary_band(mask, width):
    """Pixels that have two different real labels within `width` px."""
    size = 2 * width + 1
    real = mask != IGNORE
    # largest label nearby (ignore counted as -1) and smallest label nearby (ignore counted as 255)
    up = np.where(real, mask.astype(np.int16) + 1, 0).astype(np.uint8)
    hi = np.asarray(Image.fromarray(up).filter(ImageFilter.MaxFilter(size))).astype(np.int16) - 1
    lo = np.asarray(Image.fromarray(mask).filter(ImageFilter.MinFilter(size))).astype(np.int16)
    return (hi >= 0) & (lo != IGNORE) & (hi != lo)


def render(entry):
    path = os.path.normpath(os.path.join(HERE, entry["image"]))
    with Image.open(path) as im:
        w, h = im.size
    labels = entry["labels"]
    canvas = Image.new("L", (w, h), IGNORE)
    draw = ImageDraw.Draw(canvas)
    for poly in entry["polygons"]:
        lab = poly["label"]
        if lab == "ignore":
            value = IGNORE
        elif lab in labels:
            value = labels.index(lab)
        else:
            raise ValueError(f"{entry['name']}: label {lab!r} not in labels {labels}")
        pts = [tuple(float(c) for c in p) for p in poly["points"]]
        if len(pts) < 3:
            raise ValueError(f"{entry['name']}: polygon with fewer than 3 points")
        draw.polygon(pts, fill=value, outline=value)
    mask = np.array(canvas, dtype=np.uint8)
    border = int(entry.get("ignore_border", 0))
    if border > 0:
        mask[boundary_band(mask, border)] = IGNORE
    return mask, labels


def main():
    ann_path = os.path.join(HERE, "annotations.json")
    with open(ann_path) as f:
        ann = json.load(f)
    only = set(sys.argv[1:])
    for entry in ann["images"]:
        if only and entry["name"] not in only:
            continue
        mask, labels = render(entry)
        out = os.path.join(HERE, entry["name"] + ".mask.png")
        Image.fromarray(mask).save(out, optimize=True)  # uint8 2-D -> mode "L"
        total = mask.size
        parts = ", ".join(
            f"{lab} {100.0 * np.count_nonzero(mask == i) / total:.1f}%" for i, lab in enumerate(labels)
        )
        ign = 100.0 * np.count_nonzero(mask == IGNORE) / total
        print(f"{entry['name']}: {mask.shape[1]}x{mask.shape[0]}  {parts}, ignore {ign:.1f}%")


if __name__ == "__main__":
    main()

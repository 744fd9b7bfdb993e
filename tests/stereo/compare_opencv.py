#!/usr/bin/env python3
"""Accuracy and speed of `ovseg stereo` against OpenCV's StereoSGBM, measured in one run.

    python3 -m venv /tmp/stereo-venv && /tmp/stereo-venv/bin/pip install -r tests/stereo/requirements.txt
    cargo build --release -p ovseg
    /tmp/stereo-venv/bin/python tests/stereo/compare_opencv.py [--ovseg target/release/ovseg]

Data: tests/data/stereo (Middlebury 2014 "Motorcycle" at 370x250, ground-truth disparity;
see tests/data/ATTRIBUTION.md). Scores on the pixels with ground truth:
- bad2: share with |d - gt| > 2, invalid (no disparity) counted as bad;
- density: share with a disparity at all;
- bad2_valid, mae_valid: over the pixels that have one.
Each is given for the whole image ("all") and for columns x >= max_disp ("x_ge_max_disp"):
OpenCV leaves the leftmost max_disp columns invalid by design, where we still match the
disparities that fit (d <= x).
Times: of the matcher alone, in-process for both (ours: the `total_ms` that
`ovseg stereo --repeat N` reports; OpenCV: `compute()`), same thread count, in rounds that
take turns between the matchers (see `compare`).
The bench case scales the pair 2x (bilinear), crops 640x480 and searches 128 disparities.
Prints one JSON object.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def read_pfm(path):
    with open(path, "rb") as f:
        assert f.readline().strip() == b"Pf"
        w, h = map(int, f.readline().split())
        scale = float(f.readline())
        data = np.frombuffer(f.read(), "<f4" if scale < 0 else ">f4").reshape(h, w)
    return data[::-1].copy()


def score(disp, gt):
    """disp: float32 with NaN/inf = invalid."""
    has_gt = np.isfinite(gt)
    valid = np.isfinite(disp) & has_gt
    err = np.abs(np.where(valid, disp, 0) - np.where(has_gt, gt, 0))
    bad = (~valid | (err > 2)) & has_gt
    n = int(has_gt.sum())
    return {
        "bad2": round(float(bad.sum()) / n, 4),
        "density": round(float(valid.sum()) / n, 4),
        "bad2_valid": round(float((valid & (err > 2)).sum()) / max(int(valid.sum()), 1), 4),
        "mae_valid": round(float(err[valid].mean()), 3),
    }


def run_ours(exe, left, right, max_disp, repeat, warmup, threads, extra):
    with tempfile.TemporaryDirectory() as out:
        # More runs than timed: the first (dropped) allocate the buffers and start the threads.
        cmd = [exe, "--threads", str(threads), "stereo", str(left), str(right), "--max-disp", str(max_disp),
               "--out", out, "--repeat", str(repeat + warmup), *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        disp = read_pfm(report["pfm"])
    stages = {k: v for k, v in report["ms"].items() if v is not None}
    return disp, report["total_ms_runs"][warmup:], stages


def opencv_matcher(mode, max_disp, block):
    return cv2.StereoSGBM_create(
        minDisparity=0, numDisparities=max_disp, blockSize=block,
        P1=8 * block * block, P2=32 * block * block,  # OpenCV's recommended scale for one channel
        disp12MaxDiff=1, uniquenessRatio=10, speckleWindowSize=0, speckleRange=0,
        preFilterCap=63, mode=mode)


def run_opencv(left, right, mode, max_disp, block, repeat, warmup):
    m = opencv_matcher(mode, max_disp, block)
    for _ in range(warmup):  # untimed, as for ours
        m.compute(left, right)
    times, raw = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        raw = m.compute(left, right)
        times.append((time.perf_counter() - t) * 1e3)
    disp = raw.astype(np.float32) / 16.0
    disp[raw < 0] = np.nan  # minDisparity - 1 (scaled by 16) marks invalid
    return disp, times


MODES = {"HH": cv2.STEREO_SGBM_MODE_HH, "SGBM_3WAY": cv2.STEREO_SGBM_MODE_SGBM_3WAY, "SGBM": cv2.STEREO_SGBM_MODE_SGBM}


def scores(disp, gt, max_disp):
    return {"all": score(disp, gt), "x_ge_max_disp": score(disp[:, max_disp:], gt[:, max_disp:])}


def compare(exe, left_path, right_path, gt, max_disp, args):
    """Rounds take turns between the matchers, so that a change in the machine's speed hits all
    of them alike; each round runs every matcher --warmup times untimed, then --repeat times. A
    matcher's ms is the median over all its timed runs; a ratio is the median over the rounds
    of the two round medians' ratio."""
    left = cv2.imread(str(left_path), cv2.IMREAD_GRAYSCALE)
    right = cv2.imread(str(right_path), cv2.IMREAD_GRAYSCALE)
    result = {"size": f"{left.shape[1]}x{left.shape[0]}", "max_disp": max_disp, "rounds": args.rounds}
    times, disps, stages = {}, {}, {}
    for _ in range(args.rounds):
        for paths in args.paths:
            name = f"ovseg_{paths}paths"
            disps[name], t, stages[name] = run_ours(exe, left_path, right_path, max_disp, args.repeat, args.warmup, args.threads, ["--paths", str(paths)])
            times.setdefault(name, []).append(t)
        for mode in args.opencv_modes:
            name = f"opencv_{mode}"
            disps[name], t = run_opencv(left, right, MODES[mode], max_disp, args.block, args.repeat, args.warmup)
            times.setdefault(name, []).append(t)
    for name, rounds in times.items():
        runs = [r for rnd in rounds for r in rnd]
        result[name] = {**scores(disps[name], gt, max_disp), "ms": round(statistics.median(runs), 1),
                        "ms_min": round(min(runs), 1), "ms_runs": [round(r, 1) for r in runs]}
        if name in stages:
            result[name]["stages_ms_last"] = {k: round(v, 1) for k, v in stages[name].items()}
    for mode in args.opencv_modes:
        for paths in args.paths:
            per_round = [statistics.median(o) / statistics.median(w)
                         for o, w in zip(times[f"opencv_{mode}"], times[f"ovseg_{paths}paths"])]
            result[f"ratio_opencv_{mode}_over_ovseg_{paths}paths"] = round(statistics.median(per_round), 2)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ovseg", default=str(ROOT / "target" / "release" / "ovseg"))
    ap.add_argument("--data", default=str(ROOT / "tests" / "data" / "stereo"))
    ap.add_argument("--max-disp", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=5, help="runs of each matcher per round")
    ap.add_argument("--warmup", type=int, default=3,
                    help="untimed runs of each matcher per round first (ours starts a process per round)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds taking turns between the matchers")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--paths", nargs="+", type=int, default=[8, 5, 4, 3], choices=[3, 4, 5, 8], help="our path counts to run")
    ap.add_argument("--block", type=int, default=5, help="OpenCV blockSize (P1/P2 follow it)")
    ap.add_argument("--opencv-modes", nargs="+", default=["HH", "SGBM_3WAY"], choices=sorted(MODES))
    ap.add_argument("--no-bench", action="store_true", help="skip the 640x480, 128-disparity case")
    args = ap.parse_args()
    cv2.setNumThreads(args.threads)
    data = Path(args.data)
    left, right = data / "motorcycle_left.png", data / "motorcycle_right.png"
    gt = read_pfm(data / "motorcycle_disp.pfm")
    out = {"opencv": cv2.__version__, "threads": args.threads, "repeat": args.repeat, "warmup": args.warmup, "opencv_block": args.block,
           "motorcycle": compare(args.ovseg, left, right, gt, args.max_disp, args)}
    if not args.no_bench:
        with tempfile.TemporaryDirectory() as tmp:
            # 2x up (bilinear), crop 640x480 at the same place in both images: still rectified,
            # disparities double (ground truth: nearest, x2).
            y0, x0 = 10, 50
            paths = []
            for src, name in ((left, "bench_left.png"), (right, "bench_right.png")):
                img = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
                big = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)[y0:y0 + 480, x0:x0 + 640]
                cv2.imwrite(str(Path(tmp) / name), big)
                paths.append(Path(tmp) / name)
            gt2 = np.repeat(np.repeat(gt, 2, 0), 2, 1)[y0:y0 + 480, x0:x0 + 640] * 2
            bench = compare(args.ovseg, paths[0], paths[1], gt2, 128, args)
        out["bench_640x480_d128"] = bench
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

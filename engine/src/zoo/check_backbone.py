"""Checks the EfficientNet-Lite0 ONNX export of `engine/examples/export_backbone.rs`.

1. onnx.checker on both exports.
2. An independent numpy forward pass (own .pth reader, unfolded BatchNorm, explicit
   TF-"SAME" padding with the odd pixel at bottom/right) on odd-sized random input,
   compared with onnxruntime tap by tap, for S32 and S16.
3. ImageNet top-5 on scikit-image `chelsea` and `coffee`, at 224x224 and native size.
4. Single-thread onnxruntime timings at 224x224 and 640x480.

Usage: python check_backbone.py WEIGHTS.pth S32.onnx S16.onnx [imagenet_names.json]
Needs: onnx onnxruntime numpy pillow scikit-image.
"""

import collections
import json
import pickle
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image
from skimage import data as skdata

# Same table as LITE0_BLOCKS in effnet.rs: (expand, kernel, stride, in, out).
BLOCKS = [
    (1, 3, 1, 32, 16), (6, 3, 2, 16, 24), (6, 3, 1, 24, 24), (6, 5, 2, 24, 40),
    (6, 5, 1, 40, 40), (6, 3, 2, 40, 80), (6, 3, 1, 80, 80), (6, 3, 1, 80, 80),
    (6, 5, 1, 80, 112), (6, 5, 1, 112, 112), (6, 5, 1, 112, 112), (6, 5, 2, 112, 192),
    (6, 5, 1, 192, 192), (6, 5, 1, 192, 192), (6, 5, 1, 192, 192), (6, 3, 1, 192, 320),
]
EPS = 1e-3
TAPS = ["stride8", "stride16", "last_block", "head", "logits"]


def load_pth(path):
    """Legacy torch.save reader using Python's own unpickler (independent of the Rust one)."""
    dtypes = {"FloatStorage": np.float32, "LongStorage": np.int64}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return lambda storage, off, size, stride, *rest: (storage, off, size, stride)
            if module == "torch" and name in dtypes:
                return name
            raise pickle.UnpicklingError(f"{module}.{name}")

        def persistent_load(self, pid):
            return pid

    with open(path, "rb") as f:
        for _ in range(3):
            pickle.load(f)
        sd = Unpickler(f).load()
        keys = pickle.load(f)
        kinds = {pid[2]: pid[1] for pid, _, _, _ in sd.values()}
        storages = {}
        for k in keys:
            n = int(np.frombuffer(f.read(8), "<i8")[0])
            dt = np.dtype(dtypes[kinds[k]]).newbyteorder("<")
            storages[k] = np.frombuffer(f.read(n * dt.itemsize), dt)
    out = {}
    for name, (pid, off, size, stride) in sd.items():
        if pid[1] != "FloatStorage":
            continue
        st = storages[pid[2]]
        out[name] = np.lib.stride_tricks.as_strided(
            st[off:], shape=size, strides=[s * 4 for s in stride]
        ).astype(np.float32)
    return out


def tf_same_pad(x, k, s, d):
    """Pads NCHW `x` like TensorFlow SAME (extra at bottom/right)."""
    pads = []
    for n in x.shape[2:]:
        out = -(-n // s)
        total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, ((0, 0), (0, 0), pads[0], pads[1]))


def conv(x, w, stride=1, dilation=1, group=1):
    """Plain NCHW conv with TF-SAME padding, float64 accumulation."""
    k = w.shape[2]
    x = tf_same_pad(x, k, stride, dilation)
    n, c, h, wd = x.shape
    oh = (h - dilation * (k - 1) - 1) // stride + 1
    ow = (wd - dilation * (k - 1) - 1) // stride + 1
    out = np.zeros((n, w.shape[0], oh, ow))
    for i in range(k):
        for j in range(k):
            patch = x[:, :, i * dilation: i * dilation + stride * (oh - 1) + 1: stride,
                      j * dilation: j * dilation + stride * (ow - 1) + 1: stride]
            if group == 1:
                out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
            else:
                out += patch * w[:, 0, i, j][None, :, None, None]
    return out


def bn(x, sd, p):
    g, b, m, v = (sd[f"{p}.{s}"] for s in ("weight", "bias", "running_mean", "running_var"))
    sh = (1, -1, 1, 1)
    return (x - m.reshape(sh)) / np.sqrt(v.reshape(sh) + EPS) * g.reshape(sh) + b.reshape(sh)


def relu6(x):
    return np.clip(x, 0, 6)


def reference(sd, x, output_stride):
    taps = {}
    x = relu6(bn(conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    cur, rate = 2, 1
    for i, (e, k, s, cin, cout) in enumerate(BLOCKS):
        p = f"_blocks.{i}"
        if cur * s > output_stride:
            st, dil, rate = 1, rate, rate * s
        else:
            cur *= s
            st, dil = s, rate
        h = x
        if e != 1:
            h = relu6(bn(conv(h, sd[f"{p}._expand_conv.weight"]), sd, f"{p}._bn0"))
        h = relu6(bn(conv(h, sd[f"{p}._depthwise_conv.weight"], st, dil, h.shape[1]), sd, f"{p}._bn1"))
        h = bn(conv(h, sd[f"{p}._project_conv.weight"]), sd, f"{p}._bn2")
        if s == 1 and cin == cout:
            h = h + x
        x = h
        if i == 4:
            taps["stride8"] = x
        if i == 10:
            taps["stride16"] = x
    taps["last_block"] = x
    taps["head"] = relu6(bn(conv(x, sd["_conv_head.weight"]), sd, "_bn1"))
    w = sd["_fc.weight"]
    taps["logits"] = np.einsum("nchw,oc->nohw", taps["head"], w) + sd["_fc.bias"][None, :, None, None]
    return taps


def session(path, threads=1):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def preprocess(img, size=None):
    im = Image.fromarray(img)
    if size is not None:
        im = im.resize(size, Image.BILINEAR)
    x = (np.asarray(im, np.float32) - 127.5) / 127.5
    return x.transpose(2, 0, 1)[None]


def softmax_of_map(logit_map):
    z = logit_map.mean(axis=(2, 3))[0].astype(np.float64)
    z = np.exp(z - z.max())
    return z / z.sum()


def main():
    pth, s32, s16 = sys.argv[1:4]
    names = json.load(open(sys.argv[4])) if len(sys.argv) > 4 else None
    label = (lambda i: f"{i} {names[i]}") if names else str

    for path in (s32, s16):
        onnx.checker.check_model(onnx.load(path), full_check=True)
    print("onnx.checker: ok (full_check) for both exports")

    sd = load_pth(pth)
    print(f"numpy reader: {len(sd)} float tensors")
    rng = np.random.default_rng(0)
    ok = True
    for (h, w) in [(45, 61), (64, 64)]:
        x = rng.uniform(-1, 1, (1, 3, h, w)).astype(np.float32)
        for os_, path in ((32, s32), (16, s16)):
            ref = reference(sd, x.astype(np.float64), os_)
            got = dict(zip(TAPS, session(path).run(TAPS, {"image": x})))
            for t in TAPS:
                if got[t].shape != ref[t].shape:
                    print(f"  {h}x{w} S{os_} {t}: shape {got[t].shape} vs ref {ref[t].shape}")
                    ok = False
                    continue
                err = np.abs(got[t] - ref[t]).max() / (np.abs(ref[t]).max() + 1e-12)
                ok &= err < 1e-4
                print(f"  {h}x{w} S{os_} {t:10s} {tuple(got[t].shape)} max rel err {err:.2e}")
    print("numpy reference vs onnxruntime:", "ok" if ok else "MISMATCH")

    sessions = {32: session(s32), 16: session(s16)}
    for name in ("chelsea", "coffee"):
        img = getattr(skdata, name)()
        for size in ((224, 224), None):
            x = preprocess(img, size)
            tops = {}
            for os_, sess in sessions.items():
                prob = softmax_of_map(sess.run(["logits"], {"image": x})[0])
                top = np.argsort(-prob)[:5]
                tops[os_] = top[0]
                desc = ", ".join(f"{label(i)} {prob[i]:.3f}" for i in top)
                print(f"{name} {x.shape[3]}x{x.shape[2]} S{os_}: {desc}")
            print(f"  top-1 S32 == S16: {tops[32] == tops[16]}")

    for (w, h) in ((224, 224), (640, 480)):
        x = rng.uniform(-1, 1, (1, 3, h, w)).astype(np.float32)
        for os_, sess in sessions.items():
            for outs in (["head"], ["logits"]):
                for _ in range(3):
                    sess.run(outs, {"image": x})
                n = 20 if w == 224 else 8
                t0 = time.perf_counter()
                for _ in range(n):
                    sess.run(outs, {"image": x})
                dt = (time.perf_counter() - t0) / n
                print(f"ORT 1 thread {w}x{h} S{os_} up to {outs[0]:6s}: {dt * 1e3:.1f} ms")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

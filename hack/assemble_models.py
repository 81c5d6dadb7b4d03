"""Assembles the Triton model repository from the installed packages; downloads nothing.

triton_models/ holds each model's configurations and the Python-backend model; the ONNX files come
from the packages that ship them (rapidocr-onnxruntime). Assembled in place by default, so that
`tritonserver --model-repository=triton_models` serves it (CPU path), and so does the official
container with `--model-config-name=gpu` (GPU path). `dayu up` assembles on its own (into its
workdir) before it starts Triton; this script is for a server started by hand or a container image.

    .venv/bin/python hack/assemble_models.py [--output DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dayu.processor.repository import SOURCE, assemble


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=SOURCE, help="repository to write (default: %(default)s)")
    output = assemble(parser.parse_args().output)
    for path in sorted(p for p in output.rglob("*") if p.is_file()):
        print(f"{path.stat().st_size:>10}  {path.relative_to(output)}")


if __name__ == "__main__":
    main()

"""Resident memory of each dataset's training split as pyrovae holds it (uint8 on the device)
against float32, the way it was held before.

MNIST is loaded from the data root through ``load_split``; the others (not downloadable here)
as a uint8 tensor of their real training-set shape (random content: memory does not depend on
it). Each measurement runs in its own process: peak RSS (CPU) or CUDA max allocated, minus the
figure before the split was made (MNIST's includes torchvision's parsing of the file); the
float32 column measures the float copy alone.

    python benchmarks/dataset_memory.py [--device cpu] [--float32] [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys

import torch

SIZES = {  # training images (all of the official training part) and image shape
    "mnist": (60000, (1, 28, 28)),
    "omniglot (IWAE split)": (24345, (1, 28, 28)),
    "cifar10": (50000, (3, 32, 32)),
    "svhn": (73257, (3, 32, 32)),
    "celeba (64x64)": (182637, (3, 64, 64)),  # train and valid partitions
}


def _peak(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(name: str, dtype: str, device: str, root) -> dict:
    from pyrovae.data.splits import Split, load_split

    dev = torch.device(device)
    before = _peak(dev)
    if name == "mnist":
        split = load_split("mnist", "train", pixels="8bit", root=root, val_size=0, device=dev)
    else:
        n, shape = SIZES[name]
        split = Split(
            torch.randint(0, 256, (n, *shape), dtype=torch.uint8, device=dev), torch.empty(0), "8bit"
        )
    if dtype == "float32":  # the float copy alone, as a float32 split would hold it
        before = _peak(dev)
    images = split.images if dtype == "uint8" else split.values()
    return {"mb": _peak(dev) - before, "nbytes_mb": images.nbytes / 2**20, "shape": list(images.shape)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root")
    p.add_argument("--float32", action="store_true", help="also measure float32 (celeba: 8 GB)")
    p.add_argument("--append")
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], a.one[1], a.device, a.data_root)))
        return
    lines = [
        "| dataset | training images | shape | uint8 tensor (MB) | peak while loading (MB) "
        "| float32 tensor (MB) |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    extra = ["--device", a.device] + (["--data-root", a.data_root] if a.data_root else [])
    for name, (n, shape) in SIZES.items():
        runs = {}
        for dtype in ("uint8", "float32") if a.float32 else ("uint8",):
            cmd = [sys.executable, __file__, "--one", name, dtype, *extra]
            runs[dtype] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        u = runs["uint8"]
        f = runs.get("float32")
        f32 = f"{f['nbytes_mb']:.0f} ({f['mb']:.0f} measured)" if f else f"{4 * u['nbytes_mb']:.0f} (4x)"
        lines.append(
            f"| {name} | {n:,} | {'x'.join(map(str, shape))} | {u['nbytes_mb']:.0f} | {u['mb']:.0f} | {f32} |"
        )
        print(lines[-1], flush=True)
    header = [
        f"Device: {a.device} ({platform.machine()}), torch {torch.__version__}; measured = peak RSS "
        "(CPU) or CUDA max allocated, minus the figure before the split was made.",
        f"Command: `python benchmarks/dataset_memory.py --device {a.device}"
        + (" --float32`" if a.float32 else "`"),
        "",
    ]
    from report import emit  # benchmarks/ is on sys.path when run as a script

    emit("\n".join(header + lines) + "\n", a.append)


if __name__ == "__main__":
    main()

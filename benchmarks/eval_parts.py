"""What one evaluation chunk of the default VAE costs, part by part, against its matrix product.

The K = 5000 evaluation runs chunks of 2500 particles of one datapoint through the decoder
(20 -> 400 -> 784). This times, at that shape, the decoder's matrix products (the floor
``benchmarks/eval_speed.py`` divides by) and the elementwise work no matrix product does: the
ReLU, and the Bernoulli log-density's two sums, sum_i x_i l_i (a product and a sum, or a
matrix-vector product) and sum_i softplus(l_i) (an exp and a log1p per pixel). Their sum over
the floor is a lower bound on time / floor for an exact Bernoulli log-density.

    python benchmarks/eval_parts.py [--run runs/mnist_vae] [--rows 2500] [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch.nn import functional as F


def timed(fn, repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls, after two warm-up calls."""
    fn(), fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * sorted(times)[len(times) // 2]


@torch.no_grad()
def inputs(run: str | None, rows: int):
    """Codes, the decoder's two weight matrices and one binary image: from a trained run (codes
    drawn from q(z|x) of its first test image, so that the logits have a trained model's range),
    else from freshly initialised layers."""
    torch.manual_seed(0)
    if run is None:
        w1, w2 = torch.nn.Linear(20, 400).weight, torch.nn.Linear(400, 784).weight
        return torch.randn(rows, 20), w1, w2, torch.bernoulli(torch.full((784,), 0.13))
    from pyrovae.run.experiment import load_run
    from pyrovae.run.recipes import evaluation_data

    r = load_run(run, device="cpu")
    x = evaluation_data(r.config, "test").images[:1]
    loc, scale = r.guide.params(x)
    z = loc + scale * torch.randn(rows, loc.shape[-1])
    w1, w2 = [m.weight for m in r.model.net.modules() if isinstance(m, torch.nn.Linear)]
    return z, w1, w2, x.flatten()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=2500)
    p.add_argument("--run", help="a trained default-VAE run (e.g. runs/mnist_vae): its decoder and codes")
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--append", help="also append the table to this markdown file")
    a = p.parse_args()
    z, w1, w2, x = inputs(a.run, a.rows)
    h = torch.relu(z @ w1.T)
    logits = h @ w2.T
    parts = {
        "matmul 20 -> 400": lambda: z @ w1.T,
        "matmul 400 -> 784": lambda: h @ w2.T,
        "ReLU on 400": lambda: torch.relu(h),
        "sum x l (product and sum)": lambda: (x * logits).sum(-1),
        "sum x l (matrix-vector)": lambda: logits @ x,
        "sum softplus(l)": lambda: F.softplus(logits).sum(-1),
    }
    ms = {name: timed(fn, a.repeats) for name, fn in parts.items()}
    floor = ms["matmul 20 -> 400"] + ms["matmul 400 -> 784"]
    lines = [
        f"### One evaluation chunk, part by part ({time.strftime('%Y-%m-%d')})",
        "",
        f"CPU ({platform.machine()}, {torch.get_num_threads()} threads); torch {torch.__version__}; "
        f"{a.rows} particle rows, median of {a.repeats}. Command: `python benchmarks/eval_parts.py"
        f"{f' --run {a.run}' if a.run else ''}`",
        "",
        "| part | ms | / matmul floor |",
        "| --- | ---: | ---: |",
        *[f"| {name} | {v:.2f} | {v / floor:.2f} |" for name, v in ms.items()],
    ]
    best = floor + ms["ReLU on 400"] + ms["sum x l (matrix-vector)"] + ms["sum softplus(l)"]
    lines.append(
        f"| lower bound: matmuls + ReLU + both sums (matrix-vector) | {best:.2f} | {best / floor:.2f} |"
    )
    from report import emit

    emit("\n".join(lines) + "\n", a.append)


if __name__ == "__main__":
    main()

"""End to end on a slice of real MNIST: fit, evaluate, sample, reconstruct, latent plots."""

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

CONFIGS = Path(__file__).parents[1] / "configs"


def pyrovae(*args, check=True):
    out = subprocess.run([sys.executable, "-m", "pyrovae", *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"pyrovae {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "mnist"
    pyrovae(
        "fit",
        str(CONFIGS / "mnist_vae.toml"),
        "--run-dir",
        str(run),
        "--device",
        "cpu",
        "--no-progress",
        "--set",
        "data.train_size=6000",
        "--set",
        "data.val_limit=1000",
        "--set",
        "data.test_limit=500",
        "--set",
        "train.epochs=4",
        "--set",
        "train.batch_size=64",
        "--set",
        "eval_samples=10",
    )
    return run


def test_fit_lowers_the_validation_loss(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_elbo"] for r in rows if r["kind"] == "epoch"]
    steps = [r["step"] for r in rows if r["kind"] == "step"]
    assert len(vals) == 4 and max(steps) == 4 * 94
    assert vals[-1] > vals[0] + 10  # nats per datapoint
    for name in (
        "config.json",
        "checkpoint.pt",
        "best.pt",
        "curves.png",
        "samples.png",
        "reconstructions.png",
        "latent.png",
    ):
        assert (run_dir / name).stat().st_size > 0, name


def test_evaluate_reports_elbo_with_standard_error(run_dir):
    out = pyrovae("evaluate", str(run_dir))
    assert "+-" in out.stdout and "nats per datapoint" in out.stdout
    report = json.loads((run_dir / "eval_test.json").read_text())
    assert report["num_datapoints"] == 500 and report["num_samples"] == 10
    elbo, recon, kl, ll = (report[k]["mean"] for k in ("elbo", "reconstruction", "kl", "log_likelihood"))
    assert -250 < elbo < ll < -90 and kl > 0  # the K-sample estimate lies above the ELBO
    assert elbo == pytest.approx(recon - kl, abs=1e-4)  # float32 sums
    assert 0 < report["elbo"]["stderr"] < 5 and 0 < report["log_likelihood"]["stderr"] < 5
    assert 1 <= report["ess"]["min"] <= report["ess"]["mean"] <= 10
    assert "log p(x)" in out.stdout and "bits per dim" in out.stdout
    pyrovae("evaluate", str(run_dir))  # same seed, same numbers
    again = json.loads((run_dir / "eval_test.json").read_text())
    timings = ("seconds", "segments")
    assert {k: v for k, v in again.items() if k not in timings} == {
        k: v for k, v in report.items() if k not in timings
    }


def test_sample_and_reconstruct_write_pngs(run_dir, tmp_path):
    pyrovae("sample", str(run_dir), "--out", str(tmp_path / "s.png"), "--num", "16")
    pyrovae("reconstruct", str(run_dir), "--out", str(tmp_path / "r.png"), "--num", "8")
    for name in ("s.png", "r.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dianne_config_writes_the_latent_plots(tmp_path):
    run = tmp_path / "dianne"
    pyrovae(
        "fit",
        str(CONFIGS / "dianne_mnist_2d.toml"),
        "--run-dir",
        str(run),
        "--no-progress",
        "--set",
        "train.max_steps=20",
        "--set",
        "data.train_size=1000",
        "--set",
        "data.val_limit=200",
        "--set",
        "data.test_limit=300",
    )
    assert (run / "latent.png").exists() and (run / "manifold.png").exists()


def test_errors_are_short_and_named(tmp_path):
    out = pyrovae("evaluate", str(tmp_path), check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "pyrovae fit" in out.stderr
    out = pyrovae("fit", str(CONFIGS / "mnist_vae.toml"), "--set", "model.name=vea", check=False)
    assert out.returncode == 2 and "did you mean 'vae'" in out.stderr.lower()
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "config.json").write_text("{}")
    out = pyrovae("sample", str(tmp_path), check=False)
    assert out.returncode == 2 and "not a readable pyrovae checkpoint" in out.stderr


def test_bits_per_dim_for_binary_pixels(run_dir):
    report = json.loads((run_dir / "eval_test.json").read_text())
    assert report["elbo_bits_per_dim"] == pytest.approx(-report["elbo"]["mean"] / (784 * 0.6931471805599453))
    assert report["log_likelihood_bits_per_dim"] == pytest.approx(
        -report["log_likelihood"]["mean"] / (784 * 0.6931471805599453)
    )


def test_diagnose_reports_khat_gap_and_active_units(run_dir):
    out = pyrovae("diagnose", str(run_dir), "--limit", "200", "--num-samples", "200", "--amortization", "5")
    assert "Pareto k-hat" in out.stdout and "active units of z" in out.stdout and "amortization" in out.stdout
    summary = json.loads((run_dir / "diagnostics.json").read_text())
    assert summary["num_datapoints"] == 200 and summary["num_samples"] == 200
    assert summary["k_hat_good"] + summary["k_hat_ok"] + summary["k_hat_bad"] == pytest.approx(1.0)
    assert summary["gap"]["mean"] > 0 and 0 < summary["ess_fraction"] < 1
    assert 1 <= summary["active_units"]["z"]["active"] <= 20
    am = summary["amortization"]
    assert am["total_gap"]["mean"] == pytest.approx(
        am["approximation_gap"]["mean"] + am["amortization_gap"]["mean"]
    )
    assert am["amortization_gap"]["mean"] > 0  # a local fit beats the encoder on its own datapoint
    table = (run_dir / "diagnostics.csv").read_text().splitlines()
    assert table[0].startswith("datapoint,label,log_px,elbo,gap,k_hat") and len(table) == 201
    assert (run_dir / "khat_gap.png").stat().st_size > 0
    # the gap's ELBO and log p(x) are evaluate's estimates, on the same datapoints
    pyrovae("evaluate", str(run_dir), "--limit", "200", "--num-samples", "200")
    report = json.loads((run_dir / "eval_test.json").read_text())
    assert summary["gap"]["mean"] == pytest.approx(
        report["log_likelihood"]["mean"] - report["elbo"]["mean"], abs=0.05
    )


def test_evaluate_adds_ais_and_bdmc_beside_importance_sampling(run_dir):
    out = pyrovae(
        "evaluate", str(run_dir), "--limit", "20", "--num-samples", "500", "--method", "ais",
        "--steps", "100", "--chains", "4", "--bdmc", "6", "--no-progress",
    )  # fmt: skip
    report = json.loads((run_dir / "eval_test.json").read_text())
    ais, bdmc = report["ais"], report["bdmc"]
    assert ais["num_datapoints"] == 20 and ais["num_steps"] == 100 and ais["num_chains"] == 4
    # annealing from q(z|x) starts from the ELBO and ends near the K = 500 estimate
    assert report["elbo"]["mean"] + 1 < ais["log_likelihood"]["mean"] < report["log_likelihood"]["mean"] + 3
    assert 0.3 < ais["acceptance"] < 1
    assert bdmc["num_datapoints"] == 6 and bdmc["num_steps"] == 100
    # stochastic bounds: close at T = 100, crossing at most by their noise
    assert -3 * bdmc["gap"]["stderr"] < bdmc["gap"]["mean"] < 2
    assert bdmc["gap"]["mean"] == pytest.approx(bdmc["upper"]["mean"] - bdmc["lower"]["mean"])
    assert "AIS log p(x)" in out.stdout and "reverse AIS" in out.stdout


def test_evaluate_refine_reports_both_proposals(run_dir):
    out = pyrovae(
        "evaluate", str(run_dir), "--limit", "12", "--num-samples", "200", "--refine", "30", "--no-progress",
    )  # fmt: skip
    report = json.loads((run_dir / "eval_test.json").read_text())["refine"]
    assert report["steps"] == 30 and report["num_samples"] == 200 and report["num_datapoints"] == 12
    for side in ("amortized", "refined"):
        assert report[side]["seconds"] > 0 and 0 <= report[side]["k_hat_bad"] <= 1
    # a tighter proposal after 30 steps: its estimate is no lower than the guide's, beyond noise
    assert report["refined"]["log_likelihood"]["mean"] > report["amortized"]["log_likelihood"]["mean"] - 0.5
    assert "q refined by 30 steps" in out.stdout
    bad = pyrovae("evaluate", str(run_dir), "--refine", "-1", check=False)
    assert bad.returncode != 0 and "steps >= 1" in bad.stderr.strip().splitlines()[-1]


def test_compare_pairs_runs_scored_on_the_same_images(run_dir, tmp_path):
    """The same run evaluated at K = 10 and K = 200 on the same 300 images: the paired standard
    error of the difference is far below the unpaired one; other images are refused by name."""
    import shutil

    other = tmp_path / "k200"
    shutil.copytree(run_dir, other)
    pyrovae("evaluate", str(run_dir), "--limit", "300", "--num-samples", "10", "--no-progress")
    pyrovae("evaluate", str(other), "--limit", "300", "--num-samples", "200", "--no-progress")
    pyrovae("compare", str(run_dir), str(other), "--format", "csv", "--out", str(tmp_path / "c.csv"))
    rows = list(csv.DictReader(io.StringIO((tmp_path / "c.csv").read_text())))
    assert [r["run"] for r in rows] == ["mnist", "k200"]
    evaluated = json.loads((run_dir / "eval_test.json").read_text())  # binary pixels: bits/dim too
    assert float(rows[0]["bits_per_dim mean"]) == pytest.approx(evaluated["log_likelihood_bits_per_dim"])
    from pyrovae.run import compare

    table = compare.compare([compare.Scored.load(run_dir), compare.Scored.load(other)])
    diff = table[1]["log_likelihood - mnist"]
    assert diff.mean > 0 and diff.spread < diff.also / 5  # a tighter bound, seen through the noise
    pyrovae("evaluate", str(other), "--limit", "200", "--num-samples", "10", "--no-progress")
    failed = pyrovae("compare", str(run_dir), str(other), check=False)
    assert (
        failed.returncode != 0
        and "did not score the same images (num_datapoints: 200 against 300)" in failed.stderr
    )

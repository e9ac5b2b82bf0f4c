"""The same command twice on CPU gives identical metrics, histories and weights."""

import csv
import subprocess
import sys

from test_resume import REPO, bench_env

METRICS = ["test_acc", "test_loss", "val_acc", "val_loss", "n_params"]


def run_once(out):
    args = ["run", "--grid", "seed", "--seeds", "0,1", "--epochs", "2", "--limit", "1000", "--param",
            "mnist.val_size=1000", "--device", "cpu", "-q", "--out", str(out)]
    done = subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, env=bench_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(out / "history.csv", newline="") as f:
        history = [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in csv.DictReader(f)]
    weights = {p.name: p.read_bytes() for p in (out / "weights").iterdir()}
    return rows, history, weights


def test_same_command_twice_on_cpu_gives_identical_results(tmp_path):
    rows_a, history_a, weights_a = run_once(tmp_path / "a")
    rows_b, history_b, weights_b = run_once(tmp_path / "b")
    assert len(rows_a) == 6 and {r["status"] for r in rows_a} == {"ok"}
    assert [r["cell_id"] for r in rows_a] == [r["cell_id"] for r in rows_b]
    assert [[r[m] for m in METRICS] for r in rows_a] == [[r[m] for m in METRICS] for r in rows_b]  # bit for bit
    assert history_a == history_b and len(history_a) == 12
    assert weights_a == weights_b and len(weights_a) == 6
    # and the seed matters: seed 0 and seed 1 of the same cell differ
    by_seed = {(r["model"], r["loss"], r["seed"]): r["test_loss"] for r in rows_a}
    assert by_seed[("linear", "mse", "0")] != by_seed[("linear", "mse", "1")]

"""The plugin module that the entry point ``bench = example = gridbench_example.plugin`` names."""

from bench import hookimpl
from gridbench_example.features import make_rff_linear
from gridbench_example.lion import Lion
from gridbench_example.losses import make_smooth_ce
from gridbench_example.spirals import load_two_spirals


@hookimpl
def bench_register_models(register):
    register("rff-linear", make_rff_linear, params={"features": 512, "scale": 8.0},
             description="linear layer on random Fourier features: linear, but not in input space")


@hookimpl
def bench_register_losses(register):
    register("smooth-ce", make_smooth_ce, params={"smoothing": 0.1},
             description="label-smoothed cross-entropy")


@hookimpl
def bench_register_datasets(register):
    register("two-spirals", load_two_spirals,
             params={"n_train": 20000, "n_val": 2000, "n_test": 2000, "turns": 1.5, "noise": 0.03, "seed": 0},
             description="two interleaved 2-D spirals: no linear classifier separates them in input space")


@hookimpl
def bench_register_optimizers(register):
    register("lion", Lion, params={"beta1": 0.9, "beta2": 0.99},
             description="Lion: the sign of an interpolated momentum, decoupled weight decay (use a ~3-10x smaller lr)")


@hookimpl
def bench_register_grids(register):
    register("spirals", [(model, loss, "two-spirals") for model in ("linear", "mlp", "rff-linear")
                         for loss in ("crossentropy", "smooth-ce")],
             description="linear vs mlp vs rff-linear on two-spirals, plain and label-smoothed cross-entropy")

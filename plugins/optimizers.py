"""Built-in optimizers (temporary registration; the implementations live in bench/optim.py for now)."""

from bench import hookimpl


def make_adam(params, lr, weight_decay=0.0, capturable=False):
    from bench.optim import Adam

    return Adam(params, lr=lr, capturable=capturable)


def make_sgd(params, lr, weight_decay=0.0, momentum=0.9, capturable=False):
    from bench.optim import SGD

    return SGD(params, lr=lr, momentum=momentum, capturable=capturable)


@hookimpl
def bench_register_optimizers(register):
    register("adam", make_adam, description="Adam", default=True)
    register("sgd", make_sgd, params={"momentum": 0.9}, description="SGD with momentum")

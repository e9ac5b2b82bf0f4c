"""Built-in optimizers (temporary registration; the implementations live in bench/optim.py for now)."""

from bench import hookimpl


def _named(name):
    def factory(params, lr, weight_decay=0.0, capturable=False):
        from bench.optim import make_optimizer

        return make_optimizer(name, params, lr, capturable=capturable)

    return factory


@hookimpl
def bench_register_optimizers(register):
    register("adam", _named("adam"), description="Adam", default=True)
    register("sgd", _named("sgd"), description="SGD with momentum 0.9")

"""Built-in learning-rate schedules (temporary registration)."""

from bench import hookimpl


@hookimpl
def bench_register_schedules(register):
    register("constant", lambda optimizer, total_steps: None, description="the same learning rate throughout",
             default=True)

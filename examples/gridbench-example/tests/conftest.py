pytest_plugins = ["bench.testing"]

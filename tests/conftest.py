"""Suite-wide set-up: installed third-party plugins never leak into tests.

Autoloading of the entry-point group ``bench`` is off for the whole suite, and for every
subprocess it starts (they inherit the environment). Tests that exercise autoloading remove the
variable from the environment they hand to the subprocess.
"""

import os

os.environ["BENCH_DISABLE_PLUGIN_AUTOLOAD"] = "1"
os.environ.pop("BENCH_STRICT_PLUGINS", None)

#: The fixtures that gridbench ships for plugin authors (bench_host, bench_run); the suite uses them too.
pytest_plugins = ["bench.testing"]

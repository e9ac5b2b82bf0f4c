"""A second small dataset for the statistics tests: ``dots``, the report plugin's blobs under another name,
with a text parameter (``note``, unused by the data) and a published reference for ``linear``."""

from bench import hookimpl
from tests.report_test_plugin import load_blobs

#: The reference ``dots`` declares: a test error that a linear model on well-separated blobs beats.
DOTS_REFERENCE = {"model": "linear", "test_error": 0.05, "label": "linear on dots", "source": "the test suite"}


def load_dots(data_dir, n=300, note=""):
    return load_blobs(data_dir, n)


@hookimpl
def bench_register_datasets(register):
    register("dots", load_dots, params={"n": 300, "note": ""}, references=[DOTS_REFERENCE],
             description="three 2-D Gaussian blobs (a second dataset for the statistics tests)")

"""Execute examples/limits-of-linearity.ipynb and store the executed copy that the docs site renders.

The site shows the notebook with its outputs (tables and figures) but does not run it when it is built:
``mkdocs build`` then needs neither torch nor the minutes of training, and gives the same pages every
time. Rerun this script after changing the notebook (tests/test_docs_site.py fails until the executed
copy has the same cells as the example):

    python docs/render_tutorial.py                 # full MNIST, 2 epochs, as the notebook defaults
    BENCH_NOTEBOOK_LIMIT=5000 python docs/render_tutorial.py   # quicker, for a draft
"""

import os
import sys
import tempfile
from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "examples" / "limits-of-linearity.ipynb"
TARGET = ROOT / "docs" / "tutorial" / "limits-of-linearity.ipynb"


def main() -> None:
    nb = nbformat.read(SOURCE, as_version=4)
    env_path = os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p)
    os.environ["PYTHONPATH"] = env_path
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    with tempfile.TemporaryDirectory() as work:
        # relative run directories, so that no path of this machine ends up in the page
        os.environ["BENCH_NOTEBOOK_OUT"] = "runs/notebook"
        nbclient.NotebookClient(nb, timeout=3600, kernel_name="python3",
                                resources={"metadata": {"path": work}}).execute()
    for cell in nb.cells:  # progress bars are noise on a static page
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs
                            if not (o.get("output_type") == "stream" and o.get("name") == "stderr")
                            and "application/vnd.jupyter.widget-view+json" not in o.get("data", {})]
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, TARGET)
    print(f"wrote {TARGET.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()

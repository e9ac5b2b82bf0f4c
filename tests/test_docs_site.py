"""The documentation site's sources: every page is in the navigation, the README's links into docs/ resolve,
the rendered tutorial is the example notebook, and no page or docstring carries a clock time, an issue
number or a timing that belongs on the benchmarks page. (``mkdocs build --strict``, tox -e docs, checks
the links and API references themselves.)"""

import ast
import json
import re

import yaml

from tests.conftest import REPO

DOCS = REPO / "docs"


def nav_pages(entries) -> list[str]:
    pages = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def mkdocs_config() -> dict:
    class Loader(yaml.SafeLoader):  # mkdocs.yml may use !ENV and python tags; none are needed here
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return yaml.load((REPO / "mkdocs.yml").read_text(), Loader=Loader)


def test_every_page_is_in_the_navigation_and_every_entry_exists():
    pages = nav_pages(mkdocs_config()["nav"])
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*") if p.suffix in (".md", ".ipynb")}
    assert set(pages) == on_disk
    assert len(pages) == len(set(pages))


def test_the_readme_links_into_pages_that_exist():
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#[^)]*)?\)", readme)
    assert len(links) >= 8, links  # the README points into the docs for the detail
    for link in links:
        assert (REPO / link).is_file(), f"README links to {link}, which does not exist"


def code_cells(path) -> list[str]:
    cells = json.loads(path.read_text())["cells"]
    return ["".join(c["source"]) for c in cells]


def test_the_rendered_tutorial_is_the_example_notebook_with_its_outputs():
    rendered = DOCS / "tutorial" / "limits-of-linearity.ipynb"
    # a stale copy fails here: run python docs/render_tutorial.py after changing the example notebook
    assert code_cells(rendered) == code_cells(REPO / "examples" / "limits-of-linearity.ipynb")
    cells = json.loads(rendered.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(c["execution_count"] for c in code)
    pictures = [o for c in code for o in c["outputs"] if "image/png" in o.get("data", {})]
    assert len(pictures) >= 3  # the curves, the templates, the learning-rate sweep
    assert not [o for c in code for o in c["outputs"] if o.get("output_type") == "error"]
    text = rendered.read_text()
    assert "/tmp/" not in text and "/work/" not in text  # no path of the machine that rendered it


CLOCK = re.compile(r"\b\d{1,2}:\d{2}(?::\d{2})? ?(?:UTC)?\b(?![\d/])")
ISSUE = re.compile(r"\bissues? #?\d+", re.I)
TIMING = re.compile(r"\b\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)? ?(?:ms|µs|s)\b(?!\w)", re.I)


def docstrings():
    for root in ("bench", "plugins", "reports"):
        for path in sorted((REPO / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    doc = ast.get_docstring(node, clean=False)
                    if doc:
                        yield f"{path.relative_to(REPO)}:{getattr(node, 'name', '<module>')}", doc


def test_no_clock_times_or_issue_numbers_in_the_readme_and_the_docs():
    for path in [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]:
        text = path.read_text()
        assert not CLOCK.findall(text), f"{path.name}: clock time {CLOCK.findall(text)}"
        assert not ISSUE.findall(text), f"{path.name}: {ISSUE.findall(text)}"


def test_docstrings_carry_no_clock_times_issue_numbers_or_timings():
    for where, doc in docstrings():
        doc = doc.replace("2025-01-01 12:00:00 UTC", "")  # bench/store.py's example of a lock holder
        assert not CLOCK.findall(doc), f"{where}: clock time {CLOCK.findall(doc)}"
        assert not ISSUE.findall(doc), f"{where}: {ISSUE.findall(doc)}"
        assert not TIMING.findall(doc), f"{where}: a timing belongs on docs/benchmarks.md: {TIMING.findall(doc)}"

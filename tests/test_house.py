"""The house: the README as a front door, links that resolve, a package root that is the course,
imports that run one way, and the public API where the README says it lives."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from helpers import REPO

PACKAGE = REPO / "npmlp"
PAGES = [REPO / "README.md", REPO / "benchmarks" / "README.md", REPO / "benchmarks" / "HISTORY.md",
         *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def imports(path: Path) -> set[str]:
    """Every npmlp module (or name in one) a file imports, spelled absolutely: 'npmlp.fast.engine'."""
    package = ["npmlp", *path.relative_to(PACKAGE).parent.parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found |= {module} | {f"{module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.startswith("npmlp.")}


def test_the_readme_is_a_front_door():
    text = (REPO / "README.md").read_text()
    assert len(text) <= 10_000, f"README.md has {len(text):,} characters; the manual belongs in docs/"
    assert "pip install -e . && npmlp train" in text
    assert "pip install -e '.[test]' && python -m pytest" in text
    assert "../shared" not in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    links = [link.split("#")[0] for link in LINK.findall(page.read_text())]
    local = [link for link in links if link and not re.match(r"[a-z]+://", link)]
    assert local or page.name != "README.md", "the README links to nothing"
    missing = [link for link in local if not (page.parent / link).exists()]
    assert not missing, f"{page.relative_to(REPO)} links to files that do not exist: {missing}"


def test_the_package_root_is_the_course():
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root) <= 16, root
    # model.py (the lecture's MLP) and models.py (the table of models) were one letter apart; the MLP
    # lives in mlp.py and neither old name may come back
    assert "mlp.py" in root and not {"model.py", "models.py"} & set(root), root
    subpackages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    assert subpackages == ["app", "fast"]


def test_the_root_imports_nothing_from_the_subpackages_and_fast_nothing_from_app():
    for path in PACKAGE.glob("*.py"):
        if path.name == "__main__.py":              # `python -m npmlp`: the command itself, on top
            continue
        up = sorted(m for m in imports(path) if m.split(".")[1] in ("app", "fast"))
        assert not up, f"{path.name} imports {up}: the reference tier stands below fast/ and app/"
    for path in (PACKAGE / "fast").glob("*.py"):
        up = sorted(m for m in imports(path) if m.split(".")[1] == "app")
        assert not up, f"fast/{path.name} imports {up}: the fast tier stands below the application"


def torch_imports(path: Path) -> set[str]:
    """Where a file imports torch: the names of the functions enclosing each import ('' for module level)."""
    where = set()

    def visit(node, function):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        else:                                         # `from torch... import`; `from .x` is npmlp's own
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
        if any(m.split(".")[0] == "torch" for m in modules):
            where.add(function)
        inner = node.name if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(path.read_text()), "")
    return where


def test_torch_is_imported_by_the_mirrors_and_by_check_pair_only():
    """`import npmlp` never needs torch: torch_mirrors.py imports it inside its functions, and
    gradcheck.check_pair only when it is handed a torch_forward."""
    paths = sorted(PACKAGE.rglob("*.py"))
    assert len(paths) > 10, paths
    found = {str(p.relative_to(PACKAGE)): where for p in paths if (where := torch_imports(p))}
    assert found.keys() == {"torch_mirrors.py", "gradcheck.py"}, found
    assert found["gradcheck.py"] == {"check_pair"}, found
    assert "" not in found["torch_mirrors.py"], "torch_mirrors.py imports torch at module level"


def test_the_public_api_imports_from_where_the_readme_says():
    import npmlp
    from npmlp import MLP, Vocab, build_dataset, load_words, split_words
    from npmlp.gradcheck import check_pair
    from npmlp.layers import (  # noqa: F401
        batchnorm_backward,
        batchnorm_forward,
        cross_entropy_backward,
        cross_entropy_forward,
        embedding_backward,
        embedding_forward,
        linear_backward,
        linear_forward,
        tanh_backward,
        tanh_forward,
    )
    assert npmlp.MLP is MLP and callable(check_pair)
    assert {"MLP", "Vocab", "build_dataset", "load_words", "split_words"} <= set(npmlp.__all__)
    assert all(callable(f) for f in (Vocab.from_words, build_dataset, load_words, split_words))


def test_the_app_names_no_model_and_imports_none_but_through_the_registry():
    """A model declares itself (its Spec): the application reads the specs the registry lists, so a
    new model is its own file, its mirror and a registry line. No app file but the registry imports
    a model module or names a model as a string."""
    from npmlp.app.registry import MODELS
    modules = {f"npmlp.{cls.__module__.split('.')[-1]}" for cls in MODELS.values()}
    assert "npmlp.mlp" in modules and "npmlp.recurrent" in modules, modules
    named = re.compile("[\"'](" + "|".join(map(re.escape, MODELS)) + ")[\"']")
    for path in sorted((PACKAGE / "app").glob("*.py")):
        if path.name == "registry.py":
            continue
        imported = sorted(m for m in imports(path) if m in modules or m.rsplit(".", 1)[0] in modules)
        assert not imported, f"app/{path.name} imports the model modules {imported}: read them through the registry"
        names = sorted({m.group(1) for m in named.finditer(path.read_text())})
        assert not names, f"app/{path.name} names the models {names}: a model's rules belong in its spec"


PATHS = re.compile(r"(?<![:\w/])npmlp/[\w/]*\.py\b")    # not `git show COMMIT:npmlp/...`: a file that was


def test_every_npmlp_file_a_page_or_docstring_names_exists():
    """A Markdown page or a docstring that sends the reader to npmlp/x.py names a file that is there
    (a rename left model.py and registry paths behind before)."""
    texts = {str(p.relative_to(REPO)): p.read_text() for p in [*PAGES, *(REPO / "examples").glob("*.py")]}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        texts[str(path.relative_to(REPO))] = "\n".join(
            ast.get_docstring(node) or "" for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))
    named = {(where, m) for where, text in texts.items() for m in PATHS.findall(text)}
    assert len(named) > 10, named
    missing = sorted((where, m) for where, m in named if not (REPO / m).exists())
    assert not missing, f"these name npmlp files that do not exist: {missing}"

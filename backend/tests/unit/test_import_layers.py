"""Imports point downward only: the layers of docs/architecture.md ("Code layers"), read from the source.

Every import counts, also one inside a function or under TYPE_CHECKING: a lazy import still ties the
lower layer to the upper one.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "archiver"
ROOT = "<root modules>"  # the modules directly in archiver/: the `archiver` command and its parts
FOUNDATION = "errors"  # archiver/errors.py, the root of the error tree: below every layer

# Top to bottom. A unit may import itself and any unit of a lower layer; units of one layer stay apart.
LAYERS = (
    ("command line", {ROOT}),
    ("dev tools", {"devtools"}),
    ("operator tools", {"tools"}),
    ("service", {"api", "metrics"}),
    ("orchestration", {"flows"}),
    ("clients", {"clients"}),
    ("data path", {"packing"}),
    ("adapters", {"storage"}),
    ("catalogue", {"scicat"}),
    ("configuration", {"config"}),
    ("foundation", {FOUNDATION}),
)
# Pairs kept apart although the layers would allow them: the API starts runs of the flows, it shares none of
# their code (what both need, connections above all, sits in clients/).
APART = {("api", "flows")}
DEPTH = {unit: depth for depth, (_, units) in enumerate(LAYERS) for unit in units}
ROOT_MODULES = {path.stem for path in PACKAGE.glob("*.py")} - {FOUNDATION}


def unit_of_module(dotted: str) -> str:
    """The unit of `archiver.<first>...`: a subpackage's name, or ROOT for a module at the package root."""
    first = dotted.split(".")[1] if "." in dotted else "__init__"
    return ROOT if first in ROOT_MODULES else first


def unit_of_file(path: Path, package: Path = PACKAGE) -> str:
    relative = path.relative_to(package)
    if len(relative.parts) > 1:
        return relative.parts[0]
    return FOUNDATION if relative.stem == FOUNDATION else ROOT


def imported_modules(tree: ast.AST, module: str):
    """(line, dotted name) of every archiver module an AST imports, `from archiver import x` as archiver.x."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "archiver":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(module.split(".")[: -node.level] + ([base] if base else []))
            if base.split(".")[0] != "archiver":
                continue
            if base == "archiver":
                for alias in node.names:
                    yield node.lineno, f"archiver.{alias.name}"
            else:
                yield node.lineno, base


def module_name(path: Path, package: Path) -> str:
    parts = ("archiver", *path.relative_to(package).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_violations(package: Path = PACKAGE) -> list[str]:
    violations = []
    for path in sorted(package.rglob("*.py")):
        source_unit = unit_of_file(path, package)
        for line, target in imported_modules(ast.parse(path.read_text(), str(path)), module_name(path, package)):
            target_unit = unit_of_module(target)
            if target_unit == source_unit:
                continue
            if DEPTH[target_unit] <= DEPTH[source_unit] or (source_unit, target_unit) in APART:
                violations.append(
                    f"{path.relative_to(package.parent)}:{line} ({source_unit}) imports {target} "
                    f"({target_unit}), which is not below it or is kept apart from it"
                )
    return violations


def test_every_unit_of_the_package_has_a_layer():
    units = {unit_of_file(path) for path in PACKAGE.rglob("*.py")}
    assert units - DEPTH.keys() == set(), "place the new package in LAYERS and in docs/architecture.md"


def test_imports_point_downward_only():
    violations = layer_violations()
    assert not violations, "\n".join(violations)


def test_an_upward_import_is_reported(tmp_path):
    package = tmp_path / "archiver"
    (package / "config").mkdir(parents=True)
    (package / "config" / "settings.py").write_text("def f():\n    from archiver.storage.s3 import s3_client\n")
    assert [v.split(" (")[0] for v in layer_violations(package)] == ["archiver/config/settings.py:2"]


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from archiver import local_services", "archiver.local_services"),
        ("import archiver.flows.serve", "archiver.flows.serve"),
        ("from ..storage import s3", "archiver.storage"),
    ],
)
def test_each_spelling_of_an_import_is_read(source, expected):
    assert [name for _, name in imported_modules(ast.parse(source), "archiver.packing.archive")] == [expected]


def test_the_api_importing_the_flows_is_reported(tmp_path):
    package = tmp_path / "archiver"
    (package / "api").mkdir(parents=True)
    (package / "api" / "links.py").write_text("from archiver.flows.jobs import run_job\n")
    assert [v.split(" (")[0] for v in layer_violations(package)] == ["archiver/api/links.py:1"]

"""Every third-party module that a jaxlm module imports when it loads comes from a distribution
that pyproject.toml declares, so that `pip install jaxlm` alone can import every part of it.
Imports inside functions (libtpu, transformers) are optional ones, and so is a module that only
an extra's users load (the PyTorch reference GPT): its imports must be in that extra. And every
declared dependency that applies to this machine is imported somewhere, by jaxlm or its tests;
and every platform gets exactly one TensorFlow (the CPU-only build where there is one)."""

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRA_MODULES = {"jaxlm/bench/torch_gpt.py": "reference"}  # loaded only by `--reference torch`
# Declared for a dependency that imports them without declaring them itself.
FOR_DEPENDENCIES = {"importlib-resources": "tensorflow_datasets"}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution_names(specs: list[str], environment: dict | None = None) -> set[str]:
    """The normalized names of the requirements whose markers hold in `environment` (this
    machine's, no extras, when None)."""
    requirements = map(Requirement, specs)
    return {
        normalized(r.name)
        for r in requirements
        if r.marker is None or r.marker.evaluate(environment)
    }


def imported_names(statements) -> set[str]:
    """Top-level package names of the absolute imports among `statements`."""
    names = set()
    for statement in statements:
        if isinstance(statement, ast.Import):
            names |= {alias.name.split(".")[0] for alias in statement.names}
        elif isinstance(statement, ast.ImportFrom) and statement.level == 0:
            names.add(statement.module.split(".")[0])
    return names


def module_level_imports(path: Path) -> set[str]:
    """Packages imported by a module's own statements (not its functions'), guarded or not."""
    body = ast.parse(path.read_text()).body
    return imported_names(body) | imported_names(
        statement for node in body if isinstance(node, ast.Try) for statement in node.body
    )


def test_module_level_imports_are_declared_dependencies():
    required = distribution_names(PROJECT["dependencies"])
    providers = importlib.metadata.packages_distributions()
    undeclared = {}
    for path in sorted((ROOT / "jaxlm").rglob("*.py")):
        module = str(path.relative_to(ROOT))
        declared = required
        if module in EXTRA_MODULES:
            declared = required | distribution_names(
                PROJECT["optional-dependencies"][EXTRA_MODULES[module]]
            )
        for name in module_level_imports(path) - set(sys.stdlib_module_names) - {"jaxlm"}:
            if not {normalized(d) for d in providers.get(name, [])} & declared:
                undeclared.setdefault(name, []).append(module)
    assert not undeclared, f"imported but not in pyproject.toml's dependencies: {undeclared}"


def test_the_check_sees_imports():
    source = ROOT / "jaxlm" / "data" / "hf_tokenizer.py"
    assert {"tokenizers", "jaxlm", "json"} <= module_level_imports(source)


def test_every_dependency_is_imported_somewhere():
    imported = set()
    for path in [*(ROOT / "jaxlm").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]:
        imported |= imported_names(ast.walk(ast.parse(path.read_text())))
    providers = importlib.metadata.packages_distributions()
    used = {normalized(d) for name in imported for d in providers.get(name, [])}
    assert distribution_names(PROJECT["dependencies"]) - used - set(FOR_DEPENDENCIES) == set()


@pytest.mark.parametrize("distribution, importer", FOR_DEPENDENCIES.items())
def test_dependencies_of_dependencies_are_still_needed(distribution, importer):
    """The importer still uses the module and none of its declared requirements brings it."""
    module = distribution.replace("-", "_")
    source_files = importlib.metadata.files(importer.replace("_", "-"))
    sources = [f for f in source_files if f.suffix == ".py" and f.parts[0] == importer]
    assert any(module in imported_names(ast.walk(ast.parse(f.read_text()))) for f in sources)
    requirements = importlib.metadata.requires(importer.replace("_", "-")) or []
    assert distribution not in distribution_names(requirements)


@pytest.mark.parametrize(
    "system, machine, tensorflow",
    [
        ("Linux", "x86_64", "tensorflow-cpu"),
        ("Linux", "aarch64", "tensorflow"),
        ("Darwin", "arm64", "tensorflow"),
        ("Windows", "AMD64", "tensorflow"),
    ],
)
def test_every_platform_gets_one_tensorflow(system, machine, tensorflow):
    platform = {"platform_system": system, "platform_machine": machine}
    names = distribution_names(PROJECT["dependencies"], platform)
    assert names & {"tensorflow", "tensorflow-cpu"} == {tensorflow}


def test_every_public_name_loads_from_the_module_it_is_listed_under():
    """`jaxlm.__all__`'s names load lazily on first use: each must exist where it is listed."""
    import jaxlm

    for name in jaxlm.__all__:
        assert getattr(jaxlm, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        jaxlm.nothing  # noqa: B018

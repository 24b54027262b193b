"""The curated public API of `operators` and its subpackages: every listed name resolves, is public in its
module, shadows no submodule, and importing a package loads nothing heavy."""
import importlib
import pkgutil
import subprocess
import sys

import pytest

PACKAGES = ["operators", "operators.io", "operators.processing", "operators.state"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves_and_is_public_where_it_lives(package):
    pkg = importlib.import_module(package)
    assert pkg.__all__ and pkg.__doc__
    submodules = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
    for name in pkg.__all__:
        value = getattr(pkg, name)
        assert name not in submodules, f"{package}.{name} would be shadowed by (or shadow) its submodule"
        home = getattr(value, "__module__", None)
        if home and home.startswith("operators."):
            assert name in importlib.import_module(home).__all__, f"{name} is not in {home}.__all__"
    with pytest.raises(AttributeError, match="no attribute"):
        getattr(pkg, "no_such_name")


def test_submodules_still_import_through_the_package():
    from operators.processing import alarms, quality, resample

    assert callable(resample.resample) and callable(quality.assess) and callable(alarms.verify_alarm)
    import operators

    assert operators.resample is resample.resample  # the function at the top level, the module below


def test_importing_the_packages_loads_no_submodule_or_heavy_library():
    code = ("import sys, operators, operators.io, operators.processing, operators.state; "
            "print(sorted(m for m in sys.modules if m.startswith(('operators.', 'scipy', 'wfdb', 'pyarrow', 'pandas'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == ["operators._lazy", "operators.io", "operators.processing", "operators.state"]


def test_every_module_all_names_exist():
    import operators

    for info in pkgutil.walk_packages(operators.__path__, "operators."):
        mod = importlib.import_module(info.name)
        for name in getattr(mod, "__all__", ()):
            assert hasattr(mod, name), f"{info.name}.__all__ lists {name!r}, which it does not define"

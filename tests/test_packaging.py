"""Packaging: the sdist is made without torch and carries everything that builds and tests con2._C;
a build of con2._C without torch says what to do; a con2._C that is there but does not load (built
against another torch) is a warning, not a silent fallback to the slower references."""
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# setup.py run with torch unimportable, as in a fresh environment or pip's isolated build
NO_TORCH = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['setup.py'] + sys.argv[1:]; "
            "runpy.run_path('setup.py', run_name='__main__')")


def _tracked_source(dest: Path) -> Path:
    """A copy of the repository's tracked files (no build outputs, no .venv)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs the git checkout of con2")
    for name in filter(None, listed.decode().split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def test_the_sdist_needs_no_torch_and_carries_the_native_sources_tests_and_licence(tmp_path):
    src = _tracked_source(tmp_path / "src")
    out = subprocess.run([sys.executable, "-c", NO_TORCH, "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=src,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (sdist,) = (tmp_path / "dist").glob("con2-*.tar.gz")
    from con2 import __version__

    assert sdist.name == f"con2-{__version__}.tar.gz"
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    tracked = {str(p.relative_to(src)) for p in src.rglob("*") if p.is_file()}
    needed = {n for n in tracked if n.startswith(("csrc/", "con2/", "tests/"))}
    needed |= {"setup.py", "pyproject.toml", "CMakeLists.txt", "LICENSE", "README.md", "Makefile",
               "benchmarks/reproduce/run.py"}
    assert not needed - names, sorted(needed - names)
    assert not [n for n in names if n.endswith((".so", ".o", ".pyc"))]


def test_building_the_extension_without_torch_says_what_to_do(tmp_path):
    src = _tracked_source(tmp_path / "src")
    out = subprocess.run([sys.executable, "-c", NO_TORCH, "build_ext", "--inplace"], cwd=src, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0
    assert "Install torch first" in out.stderr and "--no-build-isolation" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("library", [None, b"not a shared library"], ids=["absent", "broken"])
def test_a_native_extension_that_does_not_load_is_a_warning(tmp_path, library):
    pkg = tmp_path / "con2"
    shutil.copytree(ROOT / "con2", pkg, ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    if library is not None:
        (pkg / f"_C{sysconfig.get_config_var('EXT_SUFFIX')}").write_bytes(library)
    # the copy, not the checkout that an editable install's finder maps `con2` to
    probe = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
             "import con2.ops as o; assert o.__file__.startswith(sys.argv[1]), o.__file__; print(o.native_available())")
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]
    if library is None:  # a pure-Python install: `con2 info` says so, nothing to warn about
        assert "RuntimeWarning" not in out.stderr
    else:
        assert "con2._C is installed but does not load" in out.stderr and "--no-build-isolation" in out.stderr


def test_the_modules_the_readme_calls_leaves_import_nothing_from_con2():
    """README's package layout marks some modules "no con2 imports" (the CLI's entry point loads them
    before anything heavy, and everything may import them); an import from con2 there would break
    that quietly."""
    import ast
    import re

    layout = (ROOT / "README.md").read_text().split("## Package layout", 1)[1].split("\n## ", 1)[0]
    leaves = []
    for line in layout.splitlines():
        if "(no con2 imports)" in line:
            names = re.split(r",\s*", line.strip().split("  ")[0].removeprefix("con2/"))
            leaves += [ROOT / "con2" / name for name in names]
    assert {p.name for p in leaves} >= {"config.py", "metrics.py", "progress.py", "stop.py"}
    for path in leaves:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0 and not (node.module or "").startswith("con2"), (path.name, node.module)
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("con2") for a in node.names), path.name

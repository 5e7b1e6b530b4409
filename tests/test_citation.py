"""CITATION.cff is valid CFF 1.2.0 (the JSON schema cffconvert ships) and agrees with pyproject.toml, the README and
the notebooks."""

import copy
import importlib.resources
import json
import pathlib
import tomllib

import jsonschema
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def validator():
    schema = json.loads((importlib.resources.files("cffconvert") / "schemas" / "1.2.0" / "schema.json").read_text())
    assert schema["properties"]["cff-version"]["pattern"] == "^1\\.2\\.0$"  # the 1.2.0 schema, not another
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.draft7_format_checker)


@pytest.fixture(scope="module")
def citation():
    return yaml.safe_load((ROOT / "CITATION.cff").read_text())


def _errors(validator, document) -> list[str]:
    return [f"{'/'.join(map(str, error.path))}: {error.message}" for error in validator.iter_errors(document)]


def test_citation_file_is_valid_cff_1_2_0(validator, citation):
    assert _errors(validator, citation) == []


@pytest.mark.parametrize("mutate", [
    lambda c: c.pop("authors"),
    lambda c: c.pop("title"),
    lambda c: c.update({"cff-version": "1.1.0"}),
    lambda c: c["references"][0].pop("authors"),
    lambda c: c["references"][1].update(type="not-a-reference-type"),
    lambda c: c["references"][2]["authors"][0].update(**{"family-names": 3}),
], ids=["no-authors", "no-title", "cff-1.1.0", "reference-without-authors", "unknown-reference-type",
        "author-name-not-a-string"])
def test_the_schema_rejects_broken_copies(validator, citation, mutate):
    broken = copy.deepcopy(citation)
    mutate(broken)
    assert _errors(validator, broken)


def test_license_and_version_match_pyproject(citation):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert citation["license"] == project["license"]
    assert citation["version"] == project["version"]


def test_the_repository_url_is_the_one_the_readme_badges_and_the_notebooks_use(citation):
    url = citation["repository-code"]
    slug = url.removeprefix("https://github.com/")
    readme = (ROOT / "README.md").read_text()
    for notebook in sorted((ROOT / "colabs").glob("*.ipynb")):
        assert f"https://colab.research.google.com/github/{slug}/blob/main/colabs/{notebook.name}" in readme
    for notebook in sorted((ROOT / "colabs").glob("*.ipynb")):
        assert f"git+{url}.git" in notebook.read_text(), notebook.name


def test_every_reimplemented_paper_is_referenced(citation):
    titles = {reference["title"]: reference["year"] for reference in citation["references"]}
    expected = {  # title start: year, one per paper the studies re-implement
        "Trained Transformers Learn Linear Models In-Context": 2024,
        "What Can Transformers Learn In-Context?": 2022,
        "Certified Adversarial Robustness via Randomized Smoothing": 2019,
        "Stable Neural Stochastic Differential Equations": 2024,
        "Omniview-Tuning": 2024,
        "Robust Representation Consistency Model via Contrastive Denoising": 2025,
    }
    for start, year in expected.items():
        matches = [title for title in titles if title.startswith(start)]
        assert len(matches) == 1, start
        assert titles[matches[0]] == year, start

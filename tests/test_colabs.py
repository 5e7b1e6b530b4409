"""The notebooks in colabs/ run headless, top to bottom, in a fresh python3 kernel of this environment.

Each notebook runs the `tiny` preset of its study; a cell that raises fails the test (nbclient's CellExecutionError).
"""

import os
import pathlib
import time

import nbclient
import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLABS = ROOT / "colabs"
NOTEBOOK_STUDIES = ("icl", "smoothing", "sde", "omniview")


def _read(study: str):
    return nbformat.read(COLABS / f"{study}.ipynb", as_version=4)


def test_every_study_but_digits_has_a_notebook_and_nothing_else_is_there():
    from robust_jax.core.run import STUDIES

    assert sorted(p.stem for p in COLABS.glob("*.ipynb")) == sorted(NOTEBOOK_STUDIES)
    assert set(NOTEBOOK_STUDIES) == set(STUDIES) - {"digits"}


@pytest.mark.parametrize("study", NOTEBOOK_STUDIES)
def test_notebook_is_saved_without_outputs_and_starts_with_the_install_cell(study):
    notebook = _read(study)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    first = notebook.cells[1]
    assert notebook.cells[0].cell_type == "markdown" and first.cell_type == "code"
    assert 'find_spec("robust_jax") is None' in first.source and "pip" in first.source
    assert f'robust_jax.get_config("{study}", "tiny")' in "\n".join(cell.source for cell in code)


@pytest.mark.slow
@pytest.mark.parametrize("study", NOTEBOOK_STUDIES)
def test_notebook_runs_top_to_bottom(study, tmp_path):
    notebook = _read(study)
    # The kernel imports robust_jax from this checkout, on the CPU, so the install cell must find it and do nothing.
    # The tiny presets spend most of their time compiling: XLA's CPU backend at optimisation level 0 compiles about
    # twice as fast (the notebooks' code paths are the same; only the generated machine code is less optimised).
    xla_flags = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"]))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute(env=env)
    print(f"{study}.ipynb ran in {time.perf_counter() - start:.1f} s")
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    # The workdir's PNGs and the notebook's own figure are shown inline.
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) >= 2, f"{study}: expected the study's plots and a figure inline, got {len(images)} images"

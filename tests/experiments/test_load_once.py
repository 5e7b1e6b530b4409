"""The command line loads the config file once, applies the overrides once and checks once."""

import json

import pytest

from experiments import main as main_lib
from robust_jax.digits import study as digits_study

CONFIG_FILE = '''
import os
with open(os.environ["CONFIG_LOG"], "a") as log:
    log.write("module\\n")


def get_config(preset="cpu"):
    from robust_jax.configs import digits
    with open(os.environ["CONFIG_LOG"], "a") as log:
        log.write(f"get_config {preset}\\n")
    return digits.get_config(preset)
'''


def test_config_file_runs_once_and_check_config_once(tmp_path, monkeypatch):
    config_path = tmp_path / "my_digits.py"
    config_path.write_text(CONFIG_FILE)
    log = tmp_path / "config.log"
    monkeypatch.setenv("CONFIG_LOG", str(log))
    checked = []
    original = digits_study.check_config
    monkeypatch.setattr(digits_study, "check_config", lambda *a, **k: checked.append(1) or original(*a, **k))
    workdir = tmp_path / "run"
    main_lib.main(["main", f"--config={config_path}:tiny", "--config.num_steps=4", "--config.checkpoint_every=2",
                   f"--workdir={workdir}"])
    assert log.read_text().splitlines() == ["module", "get_config tiny"]
    assert len(checked) == 1
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["num_steps"] == 4 and saved["checkpoint_every"] == 2


def test_unknown_argument_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main_lib.main(["main", "--config=digits:tiny", "--workdir=/nonexistent", "--confg.x=1"])
    assert exit_info.value.code == 2
    assert "unknown argument '--confg.x=1'" in capsys.readouterr().err

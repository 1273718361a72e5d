"""The command line (`python -m vici_utils`, __main__.py): its failures are one sentence saying what to do."""
import os
from pathlib import Path

import pytest


def _unwritable_outputs(tmp_path) -> Path:
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o500)
        return tmp_path / "ro/outputs"
    if not Path("/sys").is_dir():  # root writes anywhere else
        pytest.skip("needs a folder this user cannot write")
    return Path("/sys/vici_outputs")


def test_unwritable_outputs_is_one_sentence_naming_the_folder(tmp_path, monkeypatch, capsys):
    """Issue 12 (8): an outputs folder that cannot be written."""
    from vici_utils.__main__ import main

    root = _unwritable_outputs(tmp_path)
    monkeypatch.setenv("VICI_OUTPUTS", str(root))
    for argv in (["run", "params/default.yaml", "--set", "run_name=x", "--only", "01"], ["world", "params/default.yaml"]):
        assert main(argv) == 1
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and f"the outputs folder {root} must be writable" in err[0] and "VICI_OUTPUTS" in err[0]

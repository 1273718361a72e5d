"""The run folder (run_folder.py): its files read back, or a message naming the file and the command that
remakes it."""
import pytest


def test_corrupt_run_files_name_themselves_and_the_command_that_remakes_them(tmp_path):
    """Issue 22.10: a run file read back names itself and the command that remakes it."""
    import numpy as np

    from vici_utils.run_folder import RunFileError, read_features, read_json

    feats = tmp_path / "features.npz"
    remade = r"remake it with python -m vici_utils run <its params file> --set run_name=r --only 03"
    for content in (b"PK\x03\x04 not a zip at all", b""):
        feats.write_bytes(content)
        with pytest.raises(RunFileError, match=rf"{feats}: not a features file of ours .*; {remade}"):
            read_features(feats, "r")
    arrays = {k: np.array([object(), 1], dtype=object) for k in ("query_features", "query_ids", "query_names",
                                                                  "query_paths", "gallery_features", "gallery_ids",
                                                                  "gallery_names", "gallery_paths")}
    np.savez(feats, **arrays)  # pickled object arrays: never loaded
    with pytest.raises(RunFileError, match=rf"{feats}: not a features file of ours \(ValueError: Object arr.*{remade}"):
        read_features(feats, "r")
    np.savez(feats, query_features=np.zeros((2, 3)))
    with pytest.raises(RunFileError, match=rf"missing arrays \['query_ids'.*{remade}"):
        read_features(feats, "r")
    result = tmp_path / "result.json"
    result.write_text('{"best_epoch": 3, "be')
    with pytest.raises(RunFileError, match=rf"{result}: not readable JSON .* --set run_name=r --only 02"):
        read_json(result, "r", "train")

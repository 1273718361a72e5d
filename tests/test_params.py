"""Parameters: validation messages name the key and what is allowed; secrets are refused."""
import warnings

import pytest

from vici_utils.params import Params, ParamsError, absolutize, from_notebook, load, parse_set, validate
from vici_utils.params_doc import PARAMETERS_DOC, parameters_markdown
from vici_utils.paths import PARAMS_DIR


def test_shipped_params_files_validate(monkeypatch, tmp_path):
    assert load(PARAMS_DIR / "default.yaml").model_dump() == Params().model_dump()
    monkeypatch.setenv("U1652_ROOT", str(tmp_path))
    paper = load(PARAMS_DIR / "paper.yaml")
    assert paper.data_root == str(tmp_path) and paper.backbone == "vit_large_patch14_dinov2.lvd142m"
    assert paper.image_size == 518 and paper.drone_rate == 0.3 and paper.reranker == "gemini"


def test_paper_params_without_data_root_say_how_to_set_it(monkeypatch):
    monkeypatch.delenv("U1652_ROOT", raising=False)
    with pytest.raises(ParamsError, match=r"\$U1652_ROOT.*--set data_root"):
        load(PARAMS_DIR / "paper.yaml")
    assert load(PARAMS_DIR / "paper.yaml", {"data_root": "/data/u1652"}).data_root == "/data/u1652"


def test_misspelt_key_is_named_with_a_suggestion(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("drone_rat: 0.3\n")
    with pytest.raises(ParamsError, match=r"unknown parameter 'drone_rat'.*Did you mean 'drone_rate'"):
        load(f)
    with pytest.raises(ParamsError, match=r"--set: unknown parameter 'lr_rate'"):
        load(None, {"lr_rate": 1})


def test_bad_values_name_key_and_allowed_values():
    with pytest.raises(ParamsError, match=r"device = 'gpu'.*'auto', 'cpu' or 'cuda'"):
        validate({"device": "gpu"})
    with pytest.raises(ParamsError, match=r"drone_rate = 1.5.*less than or equal to 1"):
        validate({"drone_rate": 1.5})
    with pytest.raises(ParamsError, match=r"run_name"):
        validate({"run_name": "../escape"})


def test_secrets_are_never_parameters():
    for key in ("api_key", "GEMINI_API_KEY", "openai_token"):
        with pytest.raises(ParamsError, match="secret"):
            validate({key: "abc"})


def test_set_values_are_typed_and_paths_absolutised(tmp_path, monkeypatch):
    over = parse_set(["drone_rate=0.1", "shared_towers=true", "image_size=null", "run_name=a/b"])
    assert over == {"drone_rate": 0.1, "shared_towers": True, "image_size": None, "run_name": "a/b"}
    monkeypatch.chdir(tmp_path)
    cfg = load(None, {"data_root": "u1652", "init_checkpoint": "w.ckpt"})
    assert cfg.data_root == str(tmp_path / "u1652") and cfg.init_checkpoint == str(tmp_path / "w.ckpt")
    with pytest.raises(ParamsError, match="expected key=value"):
        parse_set(["drone_rate"])


def test_from_notebook_reads_only_known_keys():
    cfg = from_notebook({"run_name": "nb", "drone_rate": 0.5, "pd": object(), "cfg": None})
    assert cfg.run_name == "nb" and cfg.drone_rate == 0.5 and cfg.epochs == Params().epochs


def test_every_parameter_has_a_description_and_one_row_in_the_docs():
    missing = [k for k, f in Params.model_fields.items() if not (f.description or "").strip()]
    assert not missing, f"parameters without a description in vici_utils/params.py: {missing}"
    keys_part = parameters_markdown().partition("## Registered names")[0]
    rows = [line.split("`")[1] for line in keys_part.splitlines() if line.startswith("| `")]
    assert rows == list(Params.model_fields), "each parameter once, in the order of Params"


def test_parameters_doc_is_the_generated_one():
    assert PARAMETERS_DOC.read_text() == parameters_markdown(), (
        f"{PARAMETERS_DOC} is stale: it is generated from vici_utils/params.py and vici_utils/registry.py. "
        "Regenerate it with `.venv/bin/python -m vici_utils params-doc`")


def test_an_empty_vlm_base_url_is_an_error_not_the_public_endpoint():
    """Issue 22.9: `--set vlm_base_url=` (e.g. from an unset variable) must not silently mean Google's cloud."""
    for empty in ("", "  "):
        with pytest.raises(ParamsError, match=r"vlm_base_url .*empty.*leave the key out"):
            load(None, {"vlm_base_url": empty})
    assert load(None, {}).vlm_base_url is None  # absent: the public endpoint is the default


def test_a_literal_dollar_in_data_root_is_written_twice(tmp_path, monkeypatch):
    """Issue 22.13: `$$` is a literal `$` (a folder named price$list), not a variable reference."""
    monkeypatch.chdir(tmp_path)
    assert load(None, {"data_root": "/data/price$$list"}).data_root == "/data/price$list"
    monkeypatch.setenv("HOME_DATA", "/d")
    assert load(None, {"data_root": "${HOME_DATA}/a$$b"}).data_root == "/d/a$b"


def test_earlier_names_are_read_with_one_deprecation_warning(tmp_path, outputs):
    """Issue 20 (5): `rerank_backend` became `reranker` and the fusion rule `vlm` became `reranker`; a parameters
    file, --set and a stored run folder of an earlier version still load, to the same parameters, warning once."""
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text("rerank_backend: verifier\nfusion: vlm\n")
    new.write_text("reranker: verifier\nfusion: reranker\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        assert load(old) == load(new)
        assert load(old) == load(new)  # read again: no second line
        assert load(None, parse_set(["rerank_backend=gemini"])).reranker == "gemini"
    said = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert sorted(said) == ["fusion: vlm is now fusion: reranker: rename it (the old name is still read)",
                            "rerank_backend is now reranker: rename it (the old name is still read)"]
    with pytest.warns(FutureWarning):
        assert validate({"rerank_backend": "none", "reranker": "verifier"}).reranker == "verifier"  # today's wins
        (outputs / "old").mkdir(parents=True)
        (outputs / "old" / "params.yaml").write_text("run_name: old\nrerank_backend: none\nfusion: vlm\n")
        cfg = from_notebook({"run_name": "old"})
    assert (cfg.reranker, cfg.fusion) == ("none", "reranker")


def test_run_name_refuses_the_shared_folders_and_says_what_is_allowed():
    """Issue 12 (8): run_name and the shared folders."""
    for name in ("worlds/x", "worlds", "cache/features"):
        with pytest.raises(ParamsError, match=rf"run_name may not start with '{name.split('/')[0]}'"):
            validate({"run_name": name})
    with pytest.raises(ParamsError, match=r"letters, digits and _ - \. \(not first\), with '/' between") as e:
        validate({"run_name": "my run"})
    assert "[A-Za-z" not in str(e.value)
    assert validate({"run_name": "worlds_2/a.b"}).run_name == "worlds_2/a.b"


def test_pretrained_package_is_a_parameter_value_not_a_path():
    """pretrained: package names weights a pip package ships (weight_sources.py), so absolutize leaves it alone."""
    cfg = absolutize(validate({"backbone": "tf_efficientnet_lite0", "pretrained": "package"}))
    assert cfg.pretrained == "package"

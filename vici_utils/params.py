"""Run parameters: one pydantic model holds every user-facing key, its default and its allowed values.

The defaults are the embedded workbook (CPU, minutes); `params/default.yaml` spells them out and
`params/paper.yaml` switches to University-1652 with the paper's recipe. Secrets are never parameters:
API keys come from the environment only.
"""
from __future__ import annotations

import difflib
import os
import re
import warnings
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .paths import resolve_user_path
from .redaction import SECRET_NAME, clear_credentials
from .registry import DEFAULT_LOSS, DEFAULT_RERANKER, FUSIONS, LOSSES, RERANKERS, VALIDATION
from .run_folder import PARAMS, TRAIN, run_dir
_ENV_REF = re.compile(r"\$\$|\$\{(\w+)\}|\$(\w+)")  # $$ is a literal $
URL_KEYS = ("vlm_base_url",)  # every ${VAR} in these stays a reference: expanded only where used, never stored


RUN_NAME_PART = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
RESERVED_OUTPUTS = {"worlds": "the embedded worlds", "cache": "the feature cache"}  # folders of outputs/ itself
# The keys whose values are names of a registry (vici_utils.registry), and the values each takes besides. They are
# checked when a value is validated, so a name registered after this module was imported counts too.
REGISTERED = {"loss": LOSSES, "reranker": RERANKERS, "fusion": FUSIONS}
OTHER_VALUES = {"fusion": (VALIDATION,)}
# Keys of earlier versions -> their names now. Still read, with a deprecation warning, wherever parameters come in
# (files, --set, sweep files, a stored run's params.yaml, run.json and train/config.yaml): see `upgrade`.
RENAMED = {"rerank_backend": "reranker"}


def allowed_names(key: str) -> tuple[str, ...]:
    """The values a registry-named key takes now: its registry's names, then any value of its own."""
    return (*REGISTERED[key], *OTHER_VALUES.get(key, ()))


class ParamsError(ValueError):
    """A parameters file or override that cannot be used; the message names the key and what is allowed."""


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- the run -------------------------------------------------------------------------------
    run_name: str = Field("default", description="folder under outputs/ ('sweep/variant' nests)")
    data_root: str = Field("embedded", description="'embedded' (the generated world, outputs/worlds/) or a "
                                                   "University-1652 folder holding train/ and test/")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where to train and embed; auto = cuda when torch sees a GPU, else cpu")
    seed: int = Field(0, description="seeds the model's initial weights, the validation split, every training epoch "
                                     "(street picks, drone draws, augmentation) and the VLM's shuffled orders")
    num_workers: Optional[int] = Field(None, ge=0, description="DataLoader workers; None = automatic")
    quick_claim_seeds: int = Field(0, ge=0, le=10, description=(
        "notebook 02 measures drone mixing itself: P = 0 against P = 0.3 on the quick preset (params/quick.yaml), "
        "this many seeds each, paired by seed (2 quick trainings per seed); 0 = skip that cell"))

    # --- the embedded world (used when data_root == 'embedded') ----------------------------------
    world_seed: int = Field(0, description="seed of the embedded world: scenes, cameras, photo noise")
    world_train_locations: int = Field(400, ge=4, description="training locations (buildings) of the embedded world")
    world_test_locations: int = Field(150, ge=2, description="test locations: their street photos are the queries, "
                                                               "their tiles the gallery")
    world_distractors: int = Field(50, ge=0, description="extra gallery tiles no query asks for (University-1652: "
                                                          "250 buildings)")
    world_difficulty: float = Field(0.5, ge=0.0, le=1.0, description="0 easy to 1 hard: scene clutter and each "
                                                                      "photo's exposure, colour and noise spread")
    world_drone_views: Optional[int] = Field(None, ge=1, le=99, description=(
        "drone photos per training location; None = 4 to 6 (the default world). University-1652 has 54, taken "
        "along a descending orbit of about three turns: 54 gives the same here"))
    world_challenge: bool = Field(True, description="also write the challenge layout (workshop_* folders, "
                                                    "query_street_name.txt) that notebook 03 answers")

    # --- data split -----------------------------------------------------------------------------
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of train buildings held out for validation "
                                                                  "(select_on: val); 0 = none, train on all")
    include_google: bool = Field(False, description="also read train/google/ (University-1652's extra street "
                                                    "photos from Google) into dataset.train.google; training "
                                                    "does not use them")

    # --- model ----------------------------------------------------------------------------------
    backbone: str = Field("tf_efficientnet_lite0", description="timm model name of both towers (timm.list_models)")
    pretrained: Union[bool, str] = Field("package", description="false, true (hub weights), package (weights a pip "
                                         "package ships, vici_utils.weight_sources) or a weights file")
    image_size: Optional[int] = Field(96, ge=16, description="side of the square model input, px; None = the "
                                                              "model's own data config")
    shared_towers: bool = Field(False, description="one backbone (and head) for both views; false = two towers "
                                                   "that start from the same weights")
    embed_dim: Optional[int] = Field(None, ge=1, description="projection head size; None = no head")
    init_checkpoint: Optional[str] = Field(None, description=(
        "start the towers from this file, one of our .pt checkpoints or VICI's Lightning checkpoint (with epochs: 0 "
        "it is evaluated as it is); None = the backbone with its `pretrained` weights"))

    # --- training -------------------------------------------------------------------------------
    epochs: int = Field(48, ge=0, description="training epochs; 0 = no training, evaluate init_checkpoint or the "
                                              "pretrained backbone")
    batch_size: int = Field(64, ge=2, description="(street, satellite) pairs per step and GPU, each of another "
                                                  "building: the other pairs are the negatives")
    lr: float = Field(3e-3, gt=0, description="AdamW learning rate after warm-up (the schedule's peak)")
    weight_decay: float = Field(0.05, ge=0, description="AdamW's decoupled weight decay, on weight matrices (on "
                                                        "every parameter with decay_norms_and_biases)")
    schedule: Literal["cosine", "exponential"] = Field("cosine", description=(
        "learning rate after warm-up: cosine to 0 at the last epoch; exponential: x lr_gamma each epoch (VICI)"))
    warmup_epochs: int = Field(2, ge=0, description="epochs of linear warm-up from near 0 to lr; 0 = none")
    lr_gamma: float = Field(0.9, gt=0, le=1, description="per-epoch decay of the exponential schedule")
    temperature: float = Field(0.1, gt=0, description="loss temperature T (logits = cosine / T); the start value "
                                                      "when learnable_temperature")
    learnable_temperature: bool = Field(True, description="learn T with the model (as log 1/T, as CLIP does; T "
                                                          "stays >= 0.01); false = fixed")
    loss: str = Field(DEFAULT_LOSS, description="the contrastive loss (the names: 'Registered names' below)")
    augment: Literal["mild", "timm"] = Field(
        "mild", description="mild: small crops, colour jitter, 90-degree tile rotations (the embedded default); "
                            "timm: VICI's timm training transform for every view (crop scale 0.08-1, flip, jitter 0.4)")
    decay_norms_and_biases: bool = Field(
        False, description="weight decay on 1-D parameters too (VICI: torch AdamW on every parameter)")
    drone_rate: float = Field(0.3, ge=0.0, le=1.0, description="drone mixing: probability P that a training "
                                                                "satellite tile is replaced by a drone view of its "
                                                                "building; 0 = off")
    drone_high_only: bool = Field(False, description="drone mixing draws from the high-altitude first third of "
                                                     "each drone sequence only")
    rotate_drone: bool = Field(False, description="random 90-degree turns of drone photos too, as of satellite "
                                                  "tiles (augment: mild)")
    street_sampling: Literal["one", "all"] = Field("one", description=(
        "one: an epoch is one random street photo per building (VICI); all: every street photo once"))
    val_every: int = Field(5, ge=1, description="epochs between R@1 checks on the select_on set (the last epoch "
                                                "is always checked)")
    select_on: Literal["val", "test"] = Field("val", description=(
        "the set scored every val_every epochs (and that chooses best.pt under select_epoch: best): val = held-out "
        "train buildings (val_fraction); test = the test set, as VICI did (optimistic)"))
    select_epoch: Literal["last", "best"] = Field("last", description=(
        "the epoch whose weights best.pt holds: last = the final epoch, the schedule annealed (the select_on set is "
        "still scored, for the curve); best = the epoch with the best R@1 on the select_on set (on a few dozen "
        "held-out buildings that choice is partly noise: it cost one default seed 5 points of test R@1)"))
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description=(
        "autocast for training and embedding; auto = bf16 on a GPU or a CPU with bf16 units (AMX, AVX512-BF16), "
        "else fp32"))
    grad_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less "
                                                        "memory, slower steps")
    compile: bool = Field(False, description="torch.compile the training forward pass (slow first steps)")
    resume: bool = Field(True, description="continue from train/last.pt of this run, or return its finished "
                                           "result; false = train again from scratch")

    # --- retrieval evaluation -------------------------------------------------------------------
    flip_tta: bool = Field(False, description="retrieval embeds each image plus its horizontal flip (the official "
                                              "test.py option)")
    faiss_index: str = Field("flat", pattern=r"^[A-Za-z0-9_,.>=]+$", description=(
        "gallery search: flat = exact; hnsw = approximate graph search; or any faiss index_factory string, e.g. "
        "IVF4096,PQ64 (trained on a sample of the gallery, saved in retrieval/ and reused; vici_utils.search)"))
    faiss_nprobe: int = Field(32, ge=1, description="inverted lists visited per query by an IVF index")
    faiss_rescore_k: Optional[int] = Field(None, ge=1, description=(
        "K': the index proposes this many candidates and their exact cosine from the stored features ranks the "
        "top 10; None = the index's own scores (exact for flat)"))
    features_dtype: Literal["float32", "float16"] = Field("float32", description=(
        "rows of the sharded embedding's memory-mapped features (python -m vici_utils.embed); float16 halves "
        "the file (2 GB per million 1,024-d tiles)"))
    extra_gallery: list[str] = Field(default_factory=list, description=(
        "folders of satellite tiles that join the test gallery as distractors (University-160k's "
        "gallery_satellite_160k, or any folder of tiles); [] = none"))
    world_extra_distractors: int = Field(0, ge=0, description=(
        "embedded world: this many satellite-only distractor tiles rendered (cached under outputs/worlds/) join "
        "the test gallery, and notebook 03 plots accuracy against gallery size; 0 = none (the fast default)"))
    eval_batch_size: int = Field(128, ge=1, description="images per batch when embedding (validation, retrieval)")

    # --- re-ranking -----------------------------------------------------------------------------
    reranker: str = Field(DEFAULT_RERANKER, description=(
        "stage 2, the re-ranker (the names and what each does: 'Registered names' below)"))
    rerank_top_k: int = Field(10, ge=2, description="candidates re-ranked per query: the retrieval's top K (lower "
                                                    "ranks keep their order)")
    fusion: str = Field(VALIDATION, description=(
        "rule of answer_fused.txt and the run's reported result: a fusion rule ('Registered names' below), or "
        f"{VALIDATION} = the rule with the best R@1 when the same re-ranker re-ranks the held-out validation "
        "buildings (needs val_fraction > 0; a VLM is then asked about those queries too)"))
    vlm_model: str = Field("gemini-2.5-flash", description="model name sent to the VLM server (a Gemini model id, "
                                                           "or an OpenAI-compatible server's model)")
    vlm_base_url: Optional[str] = Field(None, description=(
        "the VLM server; None = Google's Gemini API (reranker: openai needs one); ${VAR} refers to an "
        "environment variable"))
    vlm_concurrency: int = Field(4, ge=1, description="VLM requests in flight at once")
    vlm_rpm: int = Field(60, ge=1, description="at most this many VLM requests a minute, evenly spaced")
    vlm_permutations: int = Field(1, ge=1, description="orders each query's candidates are shown in (retrieval "
                                                       "order, then seeded shuffles); ranks are averaged")
    vlm_image_size: Optional[int] = Field(384, ge=32, description=(
        "longest side of the images sent, re-encoded as JPEG: small and cheap (the embedded default); "
        "None = each file's own bytes at full resolution (VICI, params/paper.yaml)"))
    vlm_media_resolution: Literal["unspecified", "low", "medium", "high"] = Field("low", description=(
        "Gemini's token budget per image: low ~64 tokens (the embedded default); unspecified = the model's "
        "default, ~258 tokens a tile (VICI, params/paper.yaml)"))
    vlm_temperature: float = Field(0.0, ge=0.0, le=2.0, description="sampling temperature (VICI: 0)")
    vlm_thinking_budget: Optional[int] = Field(1024, ge=-1, description=(
        "Gemini 2.5 thinking tokens (VICI: 1024; 0 off, -1 dynamic, None = the server's default); "
        "the OpenAI protocol has no such setting"))
    vlm_max_retries: int = Field(5, ge=0, description="unusable answers asked again, per request and run")
    vlm_stop_after_unusable: int = Field(10, ge=1, description=(
        "stop the run after this many answers in a row unusable for the same reason (the prompt, model or server "
        "is wrong for every query), before spending vlm_max_retries on each query"))
    vlm_max_fallback_share: float = Field(0.5, ge=0.0, le=1.0, description=(
        "a run in which more re-ranked queries than this share kept their retrieval order fails; 1 accepts any"))
    vlm_timeout_s: float = Field(120.0, gt=0, description="seconds one VLM request may take; then it is retried")
    vlm_max_queries: Optional[int] = Field(None, ge=1, description="re-rank only the first N queries; None = all")
    vlm_price_in_per_mtok: Optional[float] = Field(None, ge=0, description="USD per million input tokens; None = "
                                                                            "the price table (rerank.pricing)")
    vlm_price_out_per_mtok: Optional[float] = Field(None, ge=0, description="USD per million output tokens; None = "
                                                                             "the price table")
    # Batch mode (rerank.batch): the Gemini Batch API, one job for all requests, half price, resumable by job id
    vlm_mode: Literal["interactive", "batch"] = Field("interactive", description=(
        "how a Gemini re-ranker asks: interactive = one request at a time (VICI); batch = one Batch API job for "
        "every request without a usable stored answer, at the batch price, collected by rerunning notebook 04"))
    vlm_batch_wait_s: float = Field(0.0, ge=0, description=(
        "seconds one run waits for its batch job to end; 0 = one look, then the run ends with status 'waiting' "
        "and a rerun of the same command collects the answers"))
    vlm_batch_poll_s: float = Field(30.0, gt=0, description="seconds between two looks at a running batch job")
    vlm_batch_follow_up: Literal["batch", "interactive"] = Field("batch", description=(
        "where requests go whose batch answer was unusable or missing (within vlm_max_retries): another batch "
        "job, or interactive requests"))
    vlm_batch_inline_mb: float = Field(20.0, ge=0, description=(
        "a batch job whose requests, images included, stay under this many MB is sent inline (the API's limit: "
        "20); a larger one goes as a JSONL file, each distinct image uploaded once (Files API); 0 = always a file"))
    vlm_batch_price_factor: float = Field(0.5, ge=0, description=(
        "batch price as a share of the interactive price (Google: half); applied to the price table or "
        "vlm_price_*_per_mtok"))
    # One satellite tile and ~4 street photos per building: neighbourhoods are small, so k1 is too
    # (the person re-id default of k1=20, k2=6, lambda=0.3 lowers R@1 on the embedded world).
    kr_k1: int = Field(4, ge=1, description="k-reciprocal: neighbours of each image's reciprocal set")
    kr_k2: int = Field(1, ge=1, description="k-reciprocal: neighbours averaged by local query expansion; 1 = none")
    kr_lambda: float = Field(0.5, ge=0.0, le=1.0, description="k-reciprocal: weight of the original distance "
                                                              "(1 - lambda on the Jaccard distance)")
    verifier_epochs: int = Field(20, ge=1, description="training epochs of the learned verifier (reranker: "
                                                       "verifier)")
    verifier_dim: int = Field(64, ge=8, description="the verifier's token width")
    verifier_lr: float = Field(1e-3, gt=0, description="the verifier's peak learning rate (one-cycle schedule)")

    @field_validator("run_name")
    @classmethod
    def _run_name(cls, v):
        parts = v.split("/")
        if not all(RUN_NAME_PART.fullmatch(p) for p in parts):
            raise ValueError("run_name is a folder under outputs/: letters, digits and _ - . (not first), with '/' "
                             "between nested folders (sweep/variant); no spaces, no other characters")
        if parts[0] in RESERVED_OUTPUTS:
            raise ValueError(f"run_name may not start with '{parts[0]}': outputs/{parts[0]}/ holds "
                             f"{RESERVED_OUTPUTS[parts[0]]}, shared by every run; choose another name")
        return v

    @field_validator(*REGISTERED)
    @classmethod
    def _registered(cls, v, info):
        names = allowed_names(info.field_name)
        if v not in names:  # worded as pydantic words a Literal's error
            *first, last = map(repr, names)
            raise PydanticCustomError("registered", "Input should be {names} (vici_utils.registry)",
                                      {"names": f"{', '.join(first)} or {last}" if first else last})
        return v

    @field_validator("vlm_base_url")
    @classmethod
    def _no_clear_credentials(cls, v):
        if v is not None and not v.strip():  # e.g. an unset variable: never fall back to the public endpoint
            raise ValueError("vlm_base_url is empty; leave the key out (or null) for Google's public Gemini API, "
                             "or give a server's URL")
        found = clear_credentials(v) if v else []
        if found:
            raise ValueError(f"vlm_base_url carries credentials in clear ({', '.join(found)}), which would be written "
                             "into params.yaml, run.json and the executed notebooks. Put the secret in an environment "
                             "variable with a secret-looking name and refer to it, e.g. "
                             "https://user:${VLM_TOKEN}@host/v1 (a file's ${VLM_TOKEN} stays a reference until used)")
        return v

    @field_validator("pretrained")
    @classmethod
    def _pretrained(cls, v):
        if isinstance(v, str) and v.lower() in {"true", "false", "none", ""}:
            return v.lower() == "true"
        return v

    @model_validator(mode="after")
    def _fusion_needs_validation_buildings(self):
        if self.fusion == VALIDATION and self.val_fraction == 0:
            raise ValueError(f"fusion: {VALIDATION} chooses the fusion rule on the held-out validation buildings, but "
                             f"val_fraction is 0: set val_fraction > 0, or name a rule ({', '.join(FUSIONS)})")
        if self.fusion == VALIDATION and self.vlm_mode == "batch":  # the choice would need a job of its own first
            raise ValueError(f"vlm_mode: batch re-ranks the test queries in one job and cannot choose the fusion rule "
                             f"on the validation buildings first: name a rule ({', '.join(FUSIONS)}), e.g. "
                             "--set fusion=weighted (VICI's)")
        return self

    @property
    def is_embedded(self) -> bool:
        return self.data_root == "embedded"

    def subset(self, keys) -> dict[str, Any]:
        return {k: getattr(self, k) for k in keys}


# What a stored model depends on. Evaluation checks DATA_KEYS and MODEL_KEYS against a checkpoint (the
# model is rebuilt from the checkpoint's own config); resuming training checks all of TRAIN_KEYS.
DATA_KEYS = ("data_root", "world_seed", "world_train_locations", "world_test_locations", "world_distractors",
             "world_difficulty", "world_drone_views", "include_google")
MODEL_KEYS = ("backbone", "image_size", "shared_towers", "embed_dim")
TRAIN_KEYS = (
    *DATA_KEYS, "val_fraction", "seed", *MODEL_KEYS, "pretrained", "init_checkpoint",
    "epochs", "batch_size", "lr", "weight_decay", "schedule", "warmup_epochs", "lr_gamma", "temperature",
    "learnable_temperature", "loss", "augment", "decay_norms_and_biases", "drone_rate", "drone_high_only",
    "rotate_drone", "street_sampling", "select_on", "select_epoch", "precision",
)

# How runs stored before a key existed behaved, where today's default differs: a stored params.yaml, config.yaml
# or run.json without the key is read with these values (a file you write is read with today's defaults).
STORED_BEFORE = {"select_epoch": "best"}


def as_stored(raw: dict) -> dict:
    """A stored run's parameters (already upgraded), with the keys it predates set to how it behaved."""
    return {**STORED_BEFORE, **raw}


# What only notebook 04 reads (the "re-ranking" fields above): a run of notebooks 02-03 is the same work whatever
# they are, so a sweep reuses it across them.
RERANK_KEYS = (
    "reranker", "rerank_top_k", "fusion", "vlm_model", "vlm_base_url", "vlm_concurrency", "vlm_rpm",
    "vlm_permutations", "vlm_image_size", "vlm_media_resolution", "vlm_temperature", "vlm_thinking_budget",
    "vlm_max_retries", "vlm_stop_after_unusable", "vlm_max_fallback_share", "vlm_timeout_s", "vlm_max_queries",
    "vlm_price_in_per_mtok", "vlm_price_out_per_mtok", "vlm_mode", "vlm_batch_wait_s", "vlm_batch_poll_s",
    "vlm_batch_follow_up", "vlm_batch_inline_mb", "vlm_batch_price_factor", "kr_k1", "kr_k2", "kr_lambda",
    "verifier_epochs", "verifier_dim", "verifier_lr",
)


def config_differences(stored: dict, cfg: Params, keys=TRAIN_KEYS) -> list[str]:
    """'key (stored -> now)' for each of `keys` whose value differs between a stored config and `cfg`."""
    now, stored = cfg.model_dump(), as_stored(stored)
    return [f"{k} ({stored.get(k)!r} -> {now[k]!r})" for k in keys if stored.get(k) != now[k]]


def _expand_env(value: Any, where: str, key: str) -> Any:
    """${NAME} -> the variable's value, $$ -> $. A secret-looking NAME (a token, a password), and every reference
    in a URL key, stays a reference, expanded only where it is used, so its value never reaches params.yaml,
    run.json or a notebook."""
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$$" if key in URL_KEYS else "$"
        name = m.group(1) or m.group(2)
        if name not in os.environ:
            raise ParamsError(f"{where}: '{key}' refers to ${name}, which is not set in the environment "
                              f"(set it, or pass --set {key}=...)")
        return f"${{{name}}}" if key in URL_KEYS or SECRET_NAME.search(name) else os.environ[name]

    return _ENV_REF.sub(sub, value)


def upgrade(raw: dict) -> dict:
    """`raw` with the names of earlier versions (RENAMED keys, a registry's `aliases`) replaced by today's; each old
    name warns once that it is deprecated. A key given under both names keeps today's."""
    out = {}
    for key, value in raw.items():
        new = RENAMED.get(key)
        if new:
            warnings.warn(f"{key} is now {new}: rename it (the old name is still read)", FutureWarning)
            if new in raw:
                continue
        out[new or key] = value
    for key, registry in REGISTERED.items():
        old = out.get(key)
        if isinstance(old, str) and old in registry.aliases:
            out[key] = registry.aliases[old]
            warnings.warn(f"{key}: {old} is now {key}: {out[key]}: rename it (the old name is still read)",
                          FutureWarning)
    return out


def _check_keys(raw: dict, where: str) -> None:
    known = list(Params.model_fields)
    raw = upgrade(raw)
    for key in raw:
        if SECRET_NAME.search(str(key)):
            raise ParamsError(f"{where}: '{key}' looks like a secret. Secrets are never parameters (they "
                              "would be written into the executed notebooks); set them in the environment.")
        if key not in Params.model_fields:
            close = difflib.get_close_matches(str(key), known, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ParamsError(f"{where}: unknown parameter '{key}'.{hint} Known parameters: {', '.join(known)}")


def validate(raw: dict, where: str = "parameters") -> Params:
    """Build Params from a plain dict, with messages that name the key and the allowed values."""
    written = raw = upgrade(raw)
    _check_keys(raw, where)
    raw = {k: _expand_env(v, where, k) for k, v in raw.items()}
    try:
        return Params(**raw)
    except ValidationError as e:
        lines = [f"{where}: invalid parameters"]
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"])
            # a value with ${VAR} in it is shown as written: the reference, never what it expanded to
            if not key:  # a check across keys names its keys itself; its input is every parameter
                lines.append(f"  {err['msg']}")
                continue
            shown = written[key] if key in written and written[key] != raw[key] else err.get("input")
            lines.append(f"  {key} = {shown!r}: {err['msg']}")
        raise ParamsError("\n".join(lines)) from None


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """`--set key=value` pairs; values are read as YAML (so 0.3 is a float, true a bool, null None)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"--set {item!r}: expected key=value")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return upgrade(out)


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: parameters file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of parameter: value, got {type(raw).__name__}")
    return raw


def read_params_file(path: str | os.PathLike, _seen: tuple = ()) -> dict:
    """A parameters file's keys; `base: other.yaml` (relative to the file) takes that file's keys first."""
    path = Path(path).resolve()
    if path in _seen:
        raise ParamsError(f"{path}: 'base' files refer to each other in a circle")
    raw = upgrade(read_yaml(path))
    base = raw.pop("base", None)
    if base is None:
        return raw
    return {**read_params_file(path.parent / base, (*_seen, path)), **raw}


def load(path: str | os.PathLike | None = None, overrides: dict | None = None) -> Params:
    """Parameters from a YAML file (missing keys take their defaults) with overrides on top."""
    raw = read_params_file(path) if path else {}
    if overrides:
        _check_keys(overrides, "--set")
    raw.update(upgrade(overrides or {}))
    params = validate(raw, str(path) if path else "parameters")
    return absolutize(params)


def from_command_line(argv, prog: str, description: str) -> Params:
    """`PARAMS [--set key=value ...]` of a module run by torchrun (vici_utils.train, vici_utils.embed); a bad file
    or value ends the process with the one-sentence message."""
    import argparse

    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("params", nargs="?", help="parameters YAML (default: the embedded defaults)")
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="override parameters")
    args = ap.parse_args(argv)
    try:
        return load(args.params, parse_set(args.set))
    except ParamsError as e:
        raise SystemExit(str(e)) from None


def absolutize(params: Params) -> Params:
    """Make user paths absolute against the caller's cwd before a notebook (another cwd) sees them."""
    updates = {}
    if not params.is_embedded:
        updates["data_root"] = str(resolve_user_path(params.data_root))
    if params.init_checkpoint:
        updates["init_checkpoint"] = str(resolve_user_path(params.init_checkpoint))
    if isinstance(params.pretrained, str) and params.pretrained != "package":  # package: not a path
        updates["pretrained"] = str(resolve_user_path(params.pretrained))
    return params.model_copy(update=updates)


def run_parameters(run_name: str) -> dict:
    """The resolved parameters a run was started with: outputs/<run>/params.yaml (written by the runner),
    else the training config a notebook or torchrun wrote (outputs/<run>/train/config.yaml), else {}."""
    folder = run_dir(run_name)
    for path in (folder / PARAMS, folder / TRAIN / "config.yaml"):
        if path.is_file():
            return upgrade(read_yaml(path))
    return {}


def from_notebook(namespace: dict) -> Params:
    """The parameters a notebook works with: the run's resolved parameters (`run_parameters`) with the keys
    its parameters cell declares on top. A notebook run alone, with no run folder yet, gets its cell values
    plus the defaults; papermill with only `-p run_name X` gets run X's parameters."""
    cell = {k: namespace[k] for k in Params.model_fields if k in namespace}
    raw = run_parameters(cell.get("run_name", Params.model_fields["run_name"].default))
    raw = {k: v for k, v in raw.items() if k in Params.model_fields}  # a file from an older version may hold more
    raw.update(cell)
    return absolutize(validate(raw, "notebook parameters"))


def to_yaml(params: Params) -> str:
    return yaml.safe_dump(params.model_dump(), sort_keys=False)

"""A learned cross-view verifier: the offline second look at a shortlist.

Retrieval compares two vectors computed apart. The verifier looks at a street photo and one candidate tile
*together*: the frozen stage-1 towers turn each image into a grid of feature tokens (their last stage), a
small transformer attends across both sets of tokens, and one number comes out per pair. Trained on the
training buildings only, against the stage-1 model's own shortlists (its hardest mistakes), and chosen on the
held-out validation buildings; the test set is never seen. Its ranking then goes through the same fusion rules
as a VLM's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..datasets import ImageListDataset
from ..device import autocast, resolve_precision
from ..embed import state_dict_hash
from ..models import load_model_for_eval
from ..progress import progress as progress_bar
from ..run_folder import write_atomic
from ..transforms import model_transforms
from ..u1652 import open_dataset
from .rerankers import Reranked, outcomes_from_orders

ROTATIONS = 4  # tiles have no heading relative to the street photo: every tile is seen in its 4 rotations
LEVELS = 1     # stages of the tower whose feature maps become tokens, counted from the last (2 costs ~6x more)


# --- tokens from the frozen stage-1 towers -----------------------------------------------------------------
@dataclass
class Tokens:
    """One image set through one tower: per level a token tensor [n, r, h*w, C] (r rotations), and the stage-1
    embeddings [n, r, D] (L2-normalised, as retrieval uses them)."""
    levels: list[torch.Tensor]
    emb: torch.Tensor
    grids: list[tuple[int, int]]

    def take(self, index) -> "Tokens":
        return Tokens([t[index] for t in self.levels], self.emb[index], self.grids)


@torch.inference_mode()
def tower_tokens(model, view: str, items: Sequence, transform, rotations: int = 1, batch_size: int = 128,
                 progress: bool = False, levels: int = LEVELS, precision: str = "auto") -> Tokens:
    """Feature tokens of the last `levels` stages of `view`'s tower and its embedding, for every image (and each
    of `rotations` quarter turns of it)."""
    loader = torch.utils.data.DataLoader(ImageListDataset(items, transform), batch_size=batch_size, num_workers=0)
    per_level: list[list[torch.Tensor]] = [[] for _ in range(levels)]
    embs = []
    model.eval()
    device = next(model.parameters()).device
    with progress_bar(total=len(items), desc=f"verifier tokens ({view})", unit="img", disable=not progress) as bar:
        for x, _ in loader:
            # all quarter turns in one batch, one forward pass each (embedding and maps together)
            turns = torch.cat([torch.rot90(x, r, dims=(-2, -1)) for r in range(rotations)]).to(device)
            with autocast(device, resolve_precision(precision, device)):
                emb, maps = model.encode_with_maps(turns, view, levels)
            b = len(x)
            for i in range(levels):  # [b, rotations, h*w, C]
                per_level[i].append(maps[i].float().flatten(2).transpose(1, 2)
                                    .unflatten(0, (rotations, b)).transpose(0, 1).cpu())
            embs.append(emb.unflatten(0, (rotations, b)).transpose(0, 1).cpu())
            bar.update(b)
    grids = [(int(math.isqrt(t[0].shape[2])),) * 2 for t in per_level]
    return Tokens([torch.cat(t).float() for t in per_level], torch.cat(embs).float(), grids)


def view_tokens(cfg, model, view: str, items: Sequence, progress: bool = False) -> Tokens:
    """Tokens as the verifier sees them: street photos as they are, tiles in each of their quarter turns."""
    return tower_tokens(model, view, items, model_transforms(cfg, model, False, view),
                        1 if view == "street" else ROTATIONS, progress=progress, precision=cfg.precision)


# --- the model ---------------------------------------------------------------------------------------------
class Block(nn.Module):
    """Pre-norm transformer block whose attention weights can be read (for the figure of what it looks at)."""
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * d, d))

    def forward(self, x, want_attention: bool = False):
        h = self.n1(x)
        a, w = self.attn(h, h, h, need_weights=want_attention, average_attn_weights=True)
        x = x + a
        return x + self.mlp(self.n2(x)), w


class Verifier(nn.Module):
    """Score (street photo, tile) pairs jointly: [CLS, street tokens, tile tokens] through a few transformer
    blocks; the CLS token also carries the product of the two stage-1 embeddings (what the cosine sums)."""
    def __init__(self, street_channels: Sequence[int], tile_channels: Sequence[int], street_tokens: int,
                 tile_tokens: int, emb_dim: int, dim: int = 64, heads: int = 4, layers: int = 2, dropout: float = 0.1):
        super().__init__()
        self.config = dict(street_channels=list(street_channels), tile_channels=list(tile_channels),
                           street_tokens=street_tokens, tile_tokens=tile_tokens, emb_dim=emb_dim, dim=dim,
                           heads=heads, layers=layers, dropout=dropout)
        self.street_proj = nn.ModuleList(nn.Linear(c, dim) for c in street_channels)
        self.tile_proj = nn.ModuleList(nn.Linear(c, dim) for c in tile_channels)
        self.street_pos = nn.Parameter(torch.randn(1, street_tokens, dim) * 0.02)
        self.tile_pos = nn.Parameter(torch.randn(1, tile_tokens, dim) * 0.02)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.agreement = nn.Linear(emb_dim, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 1))

    @staticmethod
    def _embed(levels: list[torch.Tensor], proj: nn.ModuleList) -> torch.Tensor:
        return torch.cat([p(t) for p, t in zip(proj, levels)], dim=1)

    def forward(self, street: list[torch.Tensor], street_emb: torch.Tensor, tile: list[torch.Tensor],
                tile_emb: torch.Tensor, want_attention: bool = False):
        """street: per level [B, Ns_l, C_l]; tile: per level [B, K, Ng_l, C_l]; embeddings [B, D], [B, K, D].
        Returns scores [B, K] (and, if asked, the last block's attention [B*K, T, T])."""
        b, k = tile_emb.shape[:2]
        s = self._embed(street, self.street_proj) + self.street_pos                       # [B, Ns, d]
        g = self._embed([t.flatten(0, 1) for t in tile], self.tile_proj) + self.tile_pos   # [B*K, Ng, d]
        s = s.unsqueeze(1).expand(b, k, *s.shape[1:]).flatten(0, 1)                         # [B*K, Ns, d]
        cls = self.cls + self.agreement(street_emb.unsqueeze(1) * tile_emb).flatten(0, 1).unsqueeze(1)
        x = torch.cat([cls, s, g], dim=1)
        w = None
        for i, block in enumerate(self.blocks):
            x, w = block(x, want_attention and i == len(self.blocks) - 1)
        scores = self.out(x[:, 0]).view(b, k)
        return (scores, w) if want_attention else scores


def build_verifier(street: Tokens, tile: Tokens, **kw) -> Verifier:
    return Verifier([t.shape[-1] for t in street.levels], [t.shape[-1] for t in tile.levels],
                    sum(t.shape[2] for t in street.levels), sum(t.shape[2] for t in tile.levels),
                    street.emb.shape[-1], **kw)


# --- shortlists ----------------------------------------------------------------------------------------------
def shortlists(query_emb: torch.Tensor, gallery_emb: torch.Tensor, k: int) -> torch.Tensor:
    """The stage-1 top k gallery indices per query (cosine, best first)."""
    return (query_emb @ gallery_emb.T).topk(min(k, len(gallery_emb)), dim=1).indices


def with_truth(cands: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Training lists: the shortlist with the true tile put in last place where retrieval missed it; returns
    the lists and the true tile's position in each."""
    cands = cands.clone()
    hit = cands == truth[:, None]
    missing = ~hit.any(1)
    cands[missing, -1] = truth[missing]
    return cands, (cands == truth[:, None]).float().argmax(1)


def pair_scores(verifier: Verifier, street: Tokens, tile: Tokens, cands: torch.Tensor, rotation=None,
                batch: int = 64) -> torch.Tensor:
    """Verifier scores [nq, K] of each query against its candidate tiles; rotation None averages the 4 turns."""
    out = []
    rots = range(ROTATIONS) if rotation is None else [rotation]
    for lo in range(0, len(cands), batch):
        idx = cands[lo:lo + batch]
        s_levels = [t[lo:lo + batch, 0] for t in street.levels]
        s_emb = street.emb[lo:lo + batch, 0]
        total = 0
        for r in rots:
            total = total + verifier([*s_levels], s_emb, [t[idx, r] for t in tile.levels], tile.emb[idx, r])
        out.append(total / len(rots))
    return torch.cat(out) if out else torch.zeros(0, cands.shape[1])


# --- training ------------------------------------------------------------------------------------------------
@dataclass
class VerifierTraining:
    verifier: Verifier
    log: list[dict]
    best_epoch: int
    best: dict


def top1(verifier: Verifier, street: Tokens, tile: Tokens, cands: torch.Tensor, truth: torch.Tensor) -> dict:
    """R@1 (%) of retrieval's order and of the verifier's own order, on one set of shortlists."""
    verifier.eval()
    with torch.no_grad():
        order = pair_scores(verifier, street, tile, cands).argmax(1)
    picked = cands[torch.arange(len(cands)), order]
    return {"retrieval R@1": 100 * (cands[:, 0] == truth).float().mean().item(),
            "verifier R@1": 100 * (picked == truth).float().mean().item()}


def train_verifier(street: Tokens, street_truth: torch.Tensor, tile: Tokens, k: int,
                   val: Optional[tuple[Tokens, torch.Tensor, Tokens]] = None, epochs: int = 20, lr: float = 1e-3,
                   batch: int = 32, seed: int = 0, progress: bool = False, lists: Optional[torch.Tensor] = None,
                   val_lists: Optional[torch.Tensor] = None, **model_kw) -> VerifierTraining:
    """Fit a verifier on training queries against the stage-1 shortlists of the training tiles (true tile forced
    in), a random quarter turn per candidate; keep the epoch whose own R@1 on `val` is best (else the last).
    lists / val_lists: shortlists to use instead of those of the tokens' own embeddings."""
    torch.manual_seed(seed)
    verifier = build_verifier(street, tile, **model_kw)
    lists = shortlists(street.emb[:, 0], tile.emb[:, 0], k) if lists is None else lists
    cands, target = with_truth(lists, street_truth)
    if val is None:
        val_lists = None
    else:
        v_street, v_truth, v_tile = val
        val_lists = (shortlists(v_street.emb[:, 0], v_tile.emb[:, 0], k) if val_lists is None else val_lists,
                     v_truth)
    opt = torch.optim.AdamW(verifier.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(cands) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    log, best_state, best = [], None, {"epoch": 0, "verifier R@1": -1.0}
    bar = progress_bar(total=epochs, desc="verifier training", unit="epoch", disable=not progress)
    for epoch in range(1, epochs + 1):
        verifier.train()
        perm = torch.randperm(len(cands), generator=g)
        total = 0.0
        for lo in range(0, len(perm), batch):
            i = perm[lo:lo + batch]
            c = cands[i]
            rot = torch.randint(ROTATIONS, c.shape, generator=g)
            logits = verifier([t[i, 0] for t in street.levels], street.emb[i, 0],
                              [t[c, rot] for t in tile.levels], tile.emb[c, rot])
            loss = F.cross_entropy(logits, target[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(i)
        row = {"epoch": epoch, "loss": total / len(cands)}
        if val_lists is not None:
            row |= top1(verifier, val[0], val[2], *val_lists)
        log.append(row)
        score = row.get("verifier R@1", epoch)  # no validation: the last epoch wins
        if score >= best["verifier R@1"] if val_lists is not None else True:
            best = {"epoch": epoch, "verifier R@1": score, **row}
            best_state = {k: v.clone() for k, v in verifier.state_dict().items()}
        bar.update(1)
        bar.set_postfix({k: f"{v:.2f}" for k, v in row.items() if k != "epoch"})
    bar.close()
    verifier.load_state_dict(best_state)
    verifier.eval()
    return VerifierTraining(verifier, log, best["epoch"], best)


def orders_from_scores(scores: np.ndarray) -> list[list[int]]:
    """Per query, the retrieval positions of its candidates by score, best first; ties keep the retrieval order."""
    return [[int(i) for i in np.argsort(-row, kind="stable")] for row in np.asarray(scores)]


# --- the re-ranker -------------------------------------------------------------------------------------------
CHECKPOINT = "verifier.pt"
LOG = "verifier_log.csv"


def truth_index(rset) -> torch.Tensor:
    """For each query of a RetrievalSet, the index of its building's tile in the gallery."""
    where = {g.building: i for i, g in enumerate(rset.gallery)}
    return torch.tensor([where[q.building] for q in rset.queries])


def attention_onto_tile(verifier: Verifier, street: Tokens, tile: Tokens, q: int, g: int) -> np.ndarray:
    """How much the verifier's street tokens attend to each token of the tile's first (finer) level, in its last
    block, as a grid [h, w] summing to 1: where on the tile it looked for the street photo."""
    with torch.no_grad():
        _, w = verifier([t[q:q + 1, 0] for t in street.levels], street.emb[q:q + 1, 0],
                        [t[g:g + 1, 0][None] for t in tile.levels], tile.emb[g:g + 1, 0][None], want_attention=True)
    ns = sum(t.shape[2] for t in street.levels)
    h, wd = tile.grids[0]
    onto = w[0, 1:1 + ns, 1 + ns:1 + ns + h * wd].sum(0)
    return (onto / onto.sum()).view(h, wd).numpy()


class VerifierReranker:
    """Trains (once per run and setting; the checkpoint lives in the run's rerank folder) and applies the learned
    cross-view verifier to each query's top K."""
    label = "a learned verifier of (street photo, tile) pairs on the stage-1 towers' feature tokens (offline)"
    how_to_read = ("the learned verifier's reason gives its match score for the candidate it put first against its "
                   "score for retrieval's first candidate (higher meaning a better match).")

    def __init__(self, cfg):
        self.cfg = cfg

    @staticmethod
    def describe(cfg) -> str:
        return (f"learned verifier ({cfg.verifier_epochs} epochs, width {cfg.verifier_dim}, on the stage-1 towers' "
                "feature tokens)")

    def check(self, job) -> None:
        load_model_for_eval(self.cfg)

    def _setting(self, model) -> dict:
        keys = ("verifier_epochs", "verifier_dim", "verifier_lr", "rerank_top_k", "seed", "val_fraction")
        return {"stage1": state_dict_hash(model), **{k: getattr(self.cfg, k) for k in keys}}

    def fit(self, model, ds, out_dir, progress: bool = True) -> tuple[Verifier, list[dict]]:
        """The run's verifier: read from out_dir when it was trained for this stage-1 model and setting,
        else trained on the training buildings and selected on the held-out ones."""
        cfg = self.cfg
        setting = self._setting(model)
        path = out_dir / CHECKPOINT
        if path.is_file():
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored.get("setting") == setting:
                verifier = Verifier(**stored["model_config"])
                verifier.load_state_dict(stored["model"])
                return verifier.eval(), stored["log"]
        train_ids, val_ids = ds.split_buildings(cfg.val_fraction, cfg.seed)

        def tokens_of(rset):
            return (view_tokens(cfg, model, "street", rset.queries, progress), truth_index(rset),
                    view_tokens(cfg, model, "satellite", rset.gallery, progress))

        street, truth, tile = tokens_of(ds.val_set(train_ids))
        val = tokens_of(ds.val_set(val_ids)) if val_ids else None
        done = train_verifier(street, truth, tile, cfg.rerank_top_k, val, epochs=cfg.verifier_epochs,
                              lr=cfg.verifier_lr, seed=cfg.seed, progress=progress, dim=cfg.verifier_dim)
        out_dir.mkdir(parents=True, exist_ok=True)
        stored = {"setting": setting, "model_config": done.verifier.config, "model": done.verifier.state_dict(),
                  "log": done.log, "best_epoch": done.best_epoch}
        write_atomic(path, lambda tmp: torch.save(stored, tmp))
        write_atomic(out_dir / LOG, pd.DataFrame(done.log).to_csv(index=False))
        return done.verifier, done.log

    def rerank(self, job):
        cfg = self.cfg
        model, _ = load_model_for_eval(cfg)
        ds = open_dataset(cfg, progress=False)
        verifier, _ = self.fit(model, ds, job.out_dir, job.show_progress)
        n = len(job.ranking)
        street = view_tokens(cfg, model, "street", job.features["query_paths"][:n], job.show_progress)
        tile = view_tokens(cfg, model, "satellite", job.features["gallery_paths"], job.show_progress)
        cands = torch.as_tensor(np.asarray(job.ranking)[:, :job.k])
        with torch.no_grad():
            scores = pair_scores(verifier, street, tile, cands).numpy()
        orders = orders_from_scores(scores)
        notes = [reason(row, order) for row, order in zip(scores, orders)]
        return Reranked(outcomes_from_orders(job, orders, notes, cfg.reranker), self.describe(cfg))

    def attention_maps(self, result, q: int) -> list[np.ndarray]:
        """For query q of a re-ranking result this re-ranker made: its attention grid onto each of the K candidates
        (retrieval order), from the run's stored verifier (rerank/verifier.pt). Notebook 04 draws it for any
        re-ranker that has this method."""
        cfg = self.cfg
        model, _ = load_model_for_eval(cfg)
        verifier, _ = self.fit(model, open_dataset(cfg, progress=False), result.out_dir, progress=False)
        f, k = result.features, result.metrics["top_k"]
        street = view_tokens(cfg, model, "street", [f["query_paths"][q]])
        tile = view_tokens(cfg, model, "satellite", [f["gallery_paths"][int(g)] for g in result.ranking[q, :k]])
        return [attention_onto_tile(verifier, street, tile, 0, j) for j in range(k)]


def reason(scores: np.ndarray, order: list[int]) -> str:
    """The verifier's reason, in words: its pick, and its score against the retrieval's first candidate."""
    first = order[0]
    if first == 0:
        runner_up = order[1]
        return (f"keeps retrieval's #1 first: verifier score {scores[0]:.2f}, next best retrieval #{runner_up + 1} "
                f"at {scores[runner_up]:.2f}")
    return (f"moves retrieval #{first + 1} to the top: verifier score {scores[first]:.2f} against "
            f"{scores[0]:.2f} for retrieval's #1")


"""Every extension point of the workbook, by name: the one place a re-ranker, a fusion rule, a loss or a kind of
results table is registered.

Each registry maps a name (the value a parameter or a sweep file takes) to "module:object". This module imports
nothing of the package, so the parameters (vici_utils.params), the sweeps and the docs can list and check the names
without importing a stage; a name becomes its object only where it is used (`Registry.load`). What an object does
is said by the object itself: a fusion rule's `label`, a table kind's `title`, a class's or a function's docstring.

Adding one is a line here and the object it names; see docs/architecture.md, "How to add ...".
"""
from __future__ import annotations

from importlib import import_module


class UnknownName(ValueError):
    """A name no registry entry has; the message names the registry and its names."""


class Registry(dict):
    """name -> "module:object". `what` is the parameter (or sweep key) that takes these names, for messages."""

    def __init__(self, what: str, entries: dict[str, str], aliases: dict[str, str] | None = None):
        super().__init__(entries)
        self.what = what
        self.aliases = aliases or {}  # a name of an earlier version -> its name now (vici_utils.params.upgrade)

    def load(self, name: str):
        """The object registered under `name` (its module imported now)."""
        if name not in self:
            raise UnknownName(f"{self.what} {name!r} is not registered (vici_utils.registry has: "
                              f"{', '.join(map(repr, self))})")
        module, obj = self[name].split(":")
        return getattr(import_module(module), obj)

    def load_all(self) -> dict:
        return {name: self.load(name) for name in self}


def labelled(label: str):
    """Give a registered object its one line in words (tables, figures, docs/parameters.md): `obj.label`."""
    def mark(obj):
        obj.label = label
        return obj
    return mark


# reranker: a class that satisfies rerank.rerankers.Reranker, with a `label`
RERANKERS = Registry("reranker", {
    "none": "vici_utils.rerank.rerankers:NoReranker",
    "kreciprocal": "vici_utils.rerank.kreciprocal:KReciprocalReranker",
    "gemini": "vici_utils.rerank.backends:GeminiBackend",
    "openai": "vici_utils.rerank.backends:OpenAIBackend",
    "verifier": "vici_utils.rerank.verifier:VerifierReranker",
})
DEFAULT_RERANKER = "kreciprocal"  # offline: needs no key and no network

# reranker with vlm_mode: batch: the same re-ranker asking through a batch API (the same requests and store)
BATCH_RERANKERS = Registry("reranker (vlm_mode: batch)", {
    "gemini": "vici_utils.rerank.batch:GeminiBatchBackend",
})

# fusion: a function (reranker_rank, retrieval_rank) -> score, lower first, @labelled
FUSIONS = Registry("fusion", {
    "weighted": "vici_utils.rerank.fusion:weighted",
    "reranker": "vici_utils.rerank.fusion:reranker",
    "rrf": "vici_utils.rerank.fusion:rrf",
}, aliases={"vlm": "reranker"})
RERANKER_ONLY = "reranker"  # the rule that keeps the re-ranker's order alone: rerank/answer_reranker.txt
VALIDATION = "validation"  # the other `fusion` value (its default): the rule best on the validation buildings

# loss: a function (street, satellite, 1/T) -> scalar tensor, @labelled '<name>: what it does'
LOSSES = Registry("loss", {
    "infonce": "vici_utils.losses:info_nce",
    "ntxent": "vici_utils.losses:nt_xent",
})
DEFAULT_LOSS = "infonce"

# a sweep's `table:`: a results.paper_tables.TableKind (its title, shape, and the paper's numbers if it has them);
# the order is the order of the tables in the README and notebook 05
TABLE_KINDS = Registry("table", {
    "backbones": "vici_utils.results.paper_tables:backbone_rows",
    "vlms": "vici_utils.results.paper_tables:vlm_rows",
    "drone_rate": "vici_utils.results.paper_tables:drone_rate_rows",
    "ablation": "vici_utils.results.paper_tables:ablation_rows",
    "": "vici_utils.results.paper_tables:own_rows",
})
OWN_TABLE = ""  # the kind of a sweep with no `table:` (and of one run's own table)

"""The PinRec network, top to bottom: input token (item tower, time features, action/surface/position
embeddings), a causal pre-LN transformer with a KV cache, the query head conditioned on outcome, surface
and future time offset, and decoding after a history (prefill once, then one appended token per step).
SASRec is the same network with PinRec's parts switched off (see config.VARIANTS).

Shapes: B batch, T tokens, P cached tokens, C width, H heads, V items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pinrec.model.config import DAY_MS, ModelConfig

WEEK_MS = 7 * DAY_MS
GAP_FREQUENCIES = 8
KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per block: keys, values (B, H, P, C/H)
STEP_MS = 1000  # appended tokens are this far apart, from the request time on (ours)
ITEM_INIT_STD = 0.02


class TimeFeatures(nn.Module):
    """Absolute time as sinusoids over a day and a week, and the gap to the previous interaction on a log
    scale through sinusoids with learnable frequencies and phases (method §1)."""

    out_dim = 4 + GAP_FREQUENCIES

    def __init__(self) -> None:
        super().__init__()
        self.gap_frequency = nn.Parameter(torch.linspace(0.1, 2.0, GAP_FREQUENCIES))
        self.gap_phase = nn.Parameter(torch.zeros(GAP_FREQUENCIES))

    def forward(self, times_ms: torch.Tensor, previous_ms: torch.Tensor) -> torch.Tensor:
        # Reduce modulo the period in int64 first: float32 cannot hold epoch milliseconds exactly.
        day = (times_ms % DAY_MS).float() * (2 * math.pi / DAY_MS)
        week = (times_ms % WEEK_MS).float() * (2 * math.pi / WEEK_MS)
        gap = torch.log1p((times_ms - previous_ms).clamp(min=0).float() / 1000)  # (B, T), log seconds
        gap_features = torch.sin(gap.unsqueeze(-1) * self.gap_frequency + self.gap_phase)
        return torch.cat(
            [
                day.sin()[..., None],
                day.cos()[..., None],
                week.sin()[..., None],
                week.cos()[..., None],
                gap_features,
            ],
            dim=-1,
        )  # (B, T, 4 + G)


class ItemTower(nn.Module):
    """item(i) = normalize(id(i) + sum_f content_f(i) * E_f): a learned ID embedding (one table, or k hashed
    tables whose slices are concatenated) plus a learned embedding per content feature, weighted by the
    item's value of it (an embedding bag over the few non-zero columns of a sparse attribute vector). The
    feature embeddings start at zero, so training starts from the plain ID table (SASRec's shared
    input/output table) and items that share attributes move together from there.

    The paper puts an MLP over [ID; content]. Ours was linear on purpose: an MLP correction (last layer
    zero-initialised) outgrew the ID embedding within an epoch and blurred items into their attributes
    (Beauty validation NDCG@10 0.046 after 11 epochs, against 0.054 for SASRec's plain ID table)."""

    def __init__(self, config: ModelConfig, content: torch.Tensor | None) -> None:
        super().__init__()
        self.config = config
        dim = config.dim
        if config.hash_tables:
            buckets = config.hash_buckets or max(1024, config.num_items // 4)
            width = dim // config.hash_tables
            self.tables = nn.ModuleList(nn.Embedding(buckets, width) for _ in range(config.hash_tables))
            # Fixed odd multipliers: k different hash functions of the item index.
            self.register_buffer(
                "hash_multipliers",
                torch.tensor([2654435761 + 2 * i * 40503 for i in range(config.hash_tables)]),
            )
            self.id_embedding = None
        else:
            self.id_embedding = nn.Embedding(config.num_items + 1, dim, padding_idx=0)
        for table in self.tables if config.hash_tables else (self.id_embedding,):
            # Small rows (GPT-2 style): the output is normalised, so the norm only sets how fast Adam turns a
            # row; rows of norm 1 (std C^-1/2) learned slower on Beauty.
            nn.init.normal_(table.weight, std=ITEM_INIT_STD)
        # Which items have an ID part: those seen in training (set_evidence). Every item until told.
        self.register_buffer("id_evidence", torch.ones(config.num_items + 1, dtype=torch.bool))
        use_content = config.use_content and config.content_dim > 0 and content is not None
        self.register_buffer("content", content.float() if use_content else None, persistent=use_content)
        self.content_bag = None
        if use_content:
            columns, weights = _sparse_rows(self.content)
            self.register_buffer("content_columns", columns, persistent=False)  # (V + 1, K), 0 = none
            self.register_buffer("content_weights", weights, persistent=False)
            self.content_bag = nn.Embedding(config.content_dim + 1, dim, padding_idx=0)
            nn.init.zeros_(self.content_bag.weight)

    def set_evidence(self, counts: np.ndarray) -> None:
        """Items without an event in the training data (counts 0) lose their ID part: its row would stay
        the random initialisation, noise that ranks such an item at random (at catalog scale most of a
        query's top 100 were such items). They are their content alone (a zero vector without content:
        nothing is known of them)."""
        self.id_evidence.copy_(torch.from_numpy(np.asarray(counts) > 0))

    def _ids(self, items: torch.Tensor) -> torch.Tensor:
        if self.id_embedding is not None:
            ids = self.id_embedding(items)
        else:
            slices = [
                table((items * multiplier) % table.num_embeddings)
                for table, multiplier in zip(self.tables, self.hash_multipliers, strict=True)
            ]
            ids = torch.cat(slices, dim=-1)
        return ids * self.id_evidence[items].unsqueeze(-1)

    def _content(self, items: torch.Tensor) -> torch.Tensor:
        flat = items.reshape(-1)
        bags = F.embedding_bag(
            self.content_columns[flat],
            self.content_bag.weight,
            per_sample_weights=self.content_weights[flat],
            mode="sum",
            padding_idx=0,
        )
        return bags.view(*items.shape, -1)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        ids = self._ids(items)  # (..., C)
        if self.content_bag is None:
            return F.normalize(ids, dim=-1)
        return F.normalize(ids + self._content(items), dim=-1)

    def all_items(self, chunk: int = 65_536) -> torch.Tensor:
        """Embeddings of items 1..V, (V, C), computed in chunks (the index is built from these)."""
        ids = torch.arange(1, self.config.num_items + 1, device=self.id_evidence.device)
        return torch.cat([self(part) for part in ids.split(chunk)])

    def table(self) -> torch.Tensor:
        """(V + 1, C): all_items() below a zero row for padding, indexable by item index."""
        items = self.all_items()
        return torch.cat([items.new_zeros(1, self.config.dim), items])


def _sparse_rows(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's non-zero columns (1-based, 0 pads) and their values, (R, K) for K the most in a row."""
    nonzero = dense != 0
    width = max(int(nonzero.sum(dim=1).max()), 1)
    # Non-zero columns first, in column order: sort by (is zero, column).
    order = torch.argsort((~nonzero).float() * dense.shape[1] + torch.arange(dense.shape[1]), dim=1)
    columns = order[:, :width]
    weights = dense.gather(1, columns)
    return torch.where(weights != 0, columns + 1, 0), weights


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)
        self.dropout = config.dropout
        self.output_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | str | None,  # boolean (B, 1, T, P + T), "causal", or None (attend to all)
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, T, c) each
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, H, P + T, c)
            v = torch.cat([past[1], v], dim=2)
        dropout = self.dropout if self.training else 0.0
        causal = isinstance(mask, str)  # "causal": no padding and no cache
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None if causal else mask, dropout_p=dropout, is_causal=causal
        )  # (B, H, T, c)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.output_dropout(self.proj(y)), (k, v)


class Block(nn.Module):
    """Pre-LayerNorm transformer block (GPT-2 style)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.dim)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.dim)
        self.mlp = nn.Sequential(
            nn.Linear(config.dim, 4 * config.dim),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(4 * config.dim, config.dim),
            nn.Dropout(config.dropout),
        )

    def forward(self, x, mask, past):
        attended, cache = self.attn(self.ln_1(x), mask, past)
        x = x + attended
        return x + self.mlp(self.ln_2(x)), cache


class QueryHead(nn.Module):
    """q = normalize(h + MLP([h; E_offset[d]; E_outcome[o]; E_surface[s]])). Without outcome conditioning
    the outcome and surface inputs are left out; without multi-token targets there is one offset ("next").
    The outcome table has one more row than the action vocabulary: "any outcome" (config.any_outcome).
    The MLP's last layer starts at zero, so a head starts as the plain next-item query normalize(h); without
    the MLP (SASRec) it stays that."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        dim = config.dim
        self.mlp = None
        if not config.query_mlp:
            return
        self.conditioned = config.outcome_conditioning
        self.offset = nn.Embedding(len(config.offsets), dim)
        if self.conditioned:
            self.outcome = nn.Embedding(config.num_actions + 1, dim)
            self.surface = nn.Embedding(config.num_surfaces, dim)
        in_dim = dim * (4 if self.conditioned else 2)
        self.mlp = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(
        self, h: torch.Tensor, outcome: torch.Tensor, surface: torch.Tensor, offset: torch.Tensor
    ) -> torch.Tensor:
        if self.mlp is None:
            return F.normalize(h, dim=-1)
        parts = [h, self.offset(offset)]
        if self.conditioned:
            parts += [self.outcome(outcome), self.surface(surface)]
        return F.normalize(h + self.mlp(torch.cat(parts, dim=-1)), dim=-1)  # (..., C)


@dataclass(frozen=True)
class Decoding:
    """What decoding after a history carries from one appended token to the next."""

    valid: torch.Tensor  # (B, P) which tokens so far are real (left padding is not)
    cache: KVCache | None  # keys and values of the tokens so far; None: recompute them at every step
    tokens: torch.Tensor | None  # (B, P, C) the input tokens so far, kept only without a cache
    context: torch.Tensor  # (B, S, C) everything of the S tokens to append but their item vectors
    appended: int = 0  # tokens appended so far


class PinRecModel(nn.Module):
    """Backbone plus a shared head ("pretrain") and optional per-surface heads (finetuned)."""

    def __init__(self, config: ModelConfig, content: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        dim = config.dim
        self.items = ItemTower(config, content)
        self.time = TimeFeatures() if config.time_features else None
        self.time_projection = nn.Linear(TimeFeatures.out_dim, dim) if config.time_features else None
        self.action = nn.Embedding(config.num_actions, dim) if config.token_context else None
        self.surface = nn.Embedding(config.num_surfaces, dim) if config.token_context else None
        self.position = nn.Embedding(config.max_len + config.max_decode_steps, dim)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(dim)
        self.heads = nn.ModuleDict({"shared": QueryHead(config)})
        # The input item is the unit item vector times sqrt(C) (entries of about 1, as in SASRec), and so are
        # positions; action and surface start small (GPT-2 style), so that they do not drown the item.
        self.item_scale = math.sqrt(dim)
        for table in (self.action, self.surface):
            if table is not None:
                nn.init.normal_(table.weight, std=0.02)

    # --- input ----------------------------------------------------------------------------------------

    def embed(
        self,
        item_vectors: torch.Tensor,  # (B, T, C) item tower outputs (or fed-back queries while decoding)
        actions: torch.Tensor,  # (B, T)
        surfaces: torch.Tensor,  # (B, T)
        times_ms: torch.Tensor,  # (B, T) int64
        previous_ms: torch.Tensor,  # (B, T) time of each token's predecessor (itself for the first)
        positions: torch.Tensor,  # (B, T)
    ) -> torch.Tensor:
        context = self.token_context(actions, surfaces, times_ms, previous_ms, positions)
        return self.dropout(self.token_with(item_vectors, context))  # (B, T, C)

    def token_context(
        self,
        actions: torch.Tensor,
        surfaces: torch.Tensor,
        times_ms: torch.Tensor,
        previous_ms: torch.Tensor,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        """Everything of an input token but its item (B, T, C): a token is the sum of its parts, so decoding
        computes this part for all steps before the loop."""
        x = self.position(positions)
        if self.time is not None:
            x = x + self.time_projection(self.time(times_ms, previous_ms))
        if self.action is not None:
            x = x + self.action(actions) + self.surface(surfaces)
        return x

    def token_with(self, item_vectors: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return item_vectors * self.item_scale + context

    # --- backbone -------------------------------------------------------------------------------------

    def backbone(
        self, x: torch.Tensor, key_valid: torch.Tensor, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, KVCache]:
        """x (B, T, C) new tokens; key_valid (B, P + T) which cached and new tokens are real. Each new token
        attends to the real tokens before it and to itself (so left padding never yields an empty row)."""
        B, T, _ = x.shape
        total = key_valid.shape[1]
        past = total - T
        if past == 0 and bool(key_valid.all()):
            mask = "causal"  # no padding: the fast causal path (prefill of one request)
        elif T == 1 and bool(key_valid.all()):
            mask = None  # one new token that may see everything (decoding one request)
        else:
            query_at = torch.arange(past, total, device=x.device).view(T, 1)
            key_at = torch.arange(total, device=x.device).view(1, total)
            causal = key_at <= query_at  # (T, P + T)
            mask = (causal & key_valid[:, None, :]) | (key_at == query_at)  # (B, T, P + T)
            mask = mask[:, None]  # (B, 1, T, P + T)
        new_cache: KVCache = []
        for i, block in enumerate(self.blocks):
            x, layer_cache = block(x, mask, cache[i] if cache is not None else None)
            new_cache.append(layer_cache)
        return self.ln_f(x), new_cache

    def encode(
        self,
        items: torch.Tensor,  # (B, T) item indices, 0 = padding (histories are left-padded)
        actions: torch.Tensor,
        surfaces: torch.Tensor,
        times_ms: torch.Tensor,
        item_table: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """Hidden states (B, T, C) of whole histories and the KV cache for decoding after them."""
        x = self.embed_history(items, actions, surfaces, times_ms, item_table)
        return self.backbone(x, items > 0)

    def embed_history(
        self,
        items: torch.Tensor,
        actions: torch.Tensor,
        surfaces: torch.Tensor,
        times_ms: torch.Tensor,
        item_table: torch.Tensor | None = None,  # (V + 1, C) precomputed item vectors (the server's)
    ) -> torch.Tensor:
        """Input tokens (B, T, C) of left-padded histories: positions count back from the newest token, which
        is always at max_len - 1 (appended tokens follow from max_len on), and each token's predecessor time
        is the previous real token's (its own for the first)."""
        valid = items > 0
        width = items.shape[1]
        positions = self.config.max_len - width + torch.arange(width, device=items.device)
        positions = positions.clamp(min=0).expand_as(items)
        positions = torch.where(valid, positions, 0)
        previous = torch.cat([times_ms[:, :1], times_ms[:, :-1]], dim=1)
        previous = torch.where(valid & (positions > 0), previous, times_ms)
        vectors = self.items(items) if item_table is None else item_table[items]
        return self.embed(vectors, actions, surfaces, times_ms, previous, positions)

    def query(
        self,
        h: torch.Tensor,
        outcome: torch.Tensor,
        surface: torch.Tensor,
        offset: torch.Tensor,
        head: str = "shared",
    ) -> torch.Tensor:
        return self.heads[head](h, outcome, surface, offset)

    def add_head(self, name: str) -> QueryHead:
        """A new head for a surface, starting from the shared head's weights."""
        head = QueryHead(self.config).to(self.position.weight.device)
        head.load_state_dict(self.heads["shared"].state_dict())
        self.heads[name] = head
        return head

    # --- decoding -------------------------------------------------------------------------------------

    def prefill(
        self,
        items: torch.Tensor,  # (B, T) item indices, 0 = padding (left-padded)
        actions: torch.Tensor,  # (B, T)
        surfaces: torch.Tensor,  # (B, T)
        times_ms: torch.Tensor,  # (B, T) int64
        now_ms: torch.Tensor,  # (B,) request times
        action: int,  # the action of every appended token (the outcome decoding feeds back)
        surface: int,  # the surface of every appended token (the request's)
        appended: int,  # tokens step() will append
        use_cache: bool = True,
        item_table: torch.Tensor | None = None,  # (V + 1, C) precomputed item vectors (the server's)
    ) -> tuple[torch.Tensor, Decoding]:
        """The last hidden state (B, C) after the history, and the state that step() appends tokens to.
        Appended tokens sit STEP_MS apart from the request time on, so everything of them but their item
        vectors (time, action, surface, position) is computed here for all of them at once: a token is
        its scaled item vector plus that context. use_cache=False keeps the input tokens instead of
        the KV cache, and each step recomputes the whole sequence (the reference the cache must equal)."""
        B = items.shape[0]
        valid = items > 0
        hidden, cache = self.encode(items, actions, surfaces, times_ms, item_table)  # (B, T, C)
        tokens = None if use_cache else self.embed_history(items, actions, surfaces, times_ms, item_table)
        device = items.device
        step_times = now_ms[:, None] + STEP_MS * torch.arange(appended, device=device)  # (B, S)
        first_before = torch.where(valid.any(dim=1), times_ms[:, -1], now_ms)[:, None]  # (B, 1)
        before = torch.cat([first_before, step_times[:, :-1]], dim=1)[:, :appended]  # (B, S)
        positions = self.config.max_len + torch.arange(appended, device=device)
        positions = positions.clamp(max=self.position.num_embeddings - 1).expand(B, appended)
        context = self.token_context(
            torch.full((B, appended), action, device=device),
            torch.full((B, appended), surface, device=device),
            step_times,
            before,
            positions,
        )  # (B, S, C)
        return hidden[:, -1], Decoding(valid, cache if use_cache else None, tokens, context)

    def step(self, vectors: torch.Tensor, state: Decoding) -> tuple[torch.Tensor, Decoding]:
        """Append the next token with these vectors (B, C) as its item (a context vector, or a fed-back
        query standing in for an item); the new last hidden state (B, C) and the state after it."""
        B = vectors.shape[0]
        at = state.appended
        x = self.token_with(vectors[:, None, :], state.context[:, at : at + 1])  # (B, 1, C)
        valid = torch.cat([state.valid, state.valid.new_ones(B, 1)], dim=1)  # (B, P + 1)
        if state.cache is None:  # the reference: recompute every token
            tokens = torch.cat([state.tokens, x], dim=1)  # (B, P + 1, C)
            out, _ = self.backbone(tokens, valid)
            return out[:, -1], Decoding(valid, None, tokens, state.context, at + 1)
        out, cache = self.backbone(x, valid, state.cache)  # (B, 1, C)
        return out[:, -1], Decoding(valid, cache, None, state.context, at + 1)

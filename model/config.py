"""The model configuration: one dataclass, a default and a short comment per field.

Sizes are ours (the paper's production model is 12 layers x 768 on GPUs); the defaults are chosen to train in
minutes on two CPU cores and to serve a request in milliseconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

# Named variants: what each one switches off. "sasrec" is the plain baseline (ID table shared by input and
# output, causal transformer, q = normalize(h), next-item targets); the rest add PinRec's parts one by one.
VARIANTS = {
    "sasrec": dict(
        outcome_conditioning=False,
        multi_token=False,
        time_features=False,
        token_context=False,
        use_content=False,
        query_mlp=False,
    ),
    "pinrec-unconditioned": dict(outcome_conditioning=False, multi_token=False),
    "pinrec-oc": dict(multi_token=False),
    "pinrec": dict(),
}


@dataclass(frozen=True)
class ModelConfig:
    num_items: int = 0  # catalog size; item index 0 is padding, items are 1..num_items
    num_actions: int = 5  # action vocabulary size (index = action code)
    num_surfaces: int = 3  # surface vocabulary size (index = surface code)
    content_dim: int = 0  # width of the item content features (0: the catalog has none)
    dim: int = 64  # model width
    layers: int = 2  # transformer blocks
    heads: int = 2  # attention heads
    max_len: int = 50  # history tokens seen by the model (the newest ones)
    max_decode_steps: int = 16  # extra positions generation may append after a full history
    dropout: float = 0.5  # on the input tokens, attention weights, attention output and inside the FFN
    hash_tables: int = 0  # 0: one ID table; k > 0: k hashed tables of width dim/k (huge catalogs)
    hash_buckets: int = 0  # rows per hashed table (default: num_items // 4)
    # Future windows the multi-token head predicts: 0 means "the next engagement", otherwise a window (ms)
    # after the position's time in which any engaged item is a valid target.
    offsets_ms: tuple[int, ...] = (0, DAY_MS, 7 * DAY_MS)
    sampled_windows: int = 1  # window targets trained per position and epoch (0: every window offset)
    window_share: float = 1.0  # share of positions, drawn per epoch, that train window targets at all
    window_weight: float = 0.5  # loss weight of a window target relative to the next-item target
    temperature: float = 0.05  # the softmax's 1/lambda on cosine scores
    loss: str = "sampled"  # "sampled": in-batch + random negatives with logQ; "full": the whole catalog
    random_negatives: int = 256  # uniformly sampled negatives per batch (loss="sampled", and finetuning)
    any_outcome_share: float = 0.25  # training targets whose outcome is hidden ("any outcome" condition)
    outcome_conditioning: bool = True  # the head takes the desired outcome (and surface) as input
    multi_token: bool = True  # predict future windows besides the next item
    time_features: bool = True  # absolute-time and gap sinusoids in the input token
    token_context: bool = True  # action and surface embeddings in the input token
    use_content: bool = True  # content feature embeddings in the item tower (when content_dim > 0)
    query_mlp: bool = True  # the head's MLP over [h; conditions] (False: q = normalize(h), SASRec)
    variant: str = "pinrec"  # name of the variant this config was built from (reported, not used)
    extra: dict = field(default_factory=dict)  # free-form facts kept with the artifact

    def __post_init__(self) -> None:
        if self.loss not in ("full", "sampled"):
            raise ValueError(f"loss must be 'full' or 'sampled', not {self.loss!r}")

    @property
    def any_outcome(self) -> int:
        """The outcome code that asks for no outcome in particular (one past the action vocabulary)."""
        return self.num_actions

    @property
    def offsets(self) -> tuple[int, ...]:
        """The offsets the model is trained and queried with (only "next" without multi-token targets)."""
        return self.offsets_ms if self.multi_token else (0,)

    def with_variant(self, variant: str) -> ModelConfig:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        return replace(self, variant=variant, **VARIANTS[variant])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        values = dict(values)
        values["offsets_ms"] = tuple(values.get("offsets_ms", cls.offsets_ms))
        return cls(**values)

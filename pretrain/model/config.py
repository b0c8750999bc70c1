"""ModelConfig: the one typed section that describes a model. Both families share it.

Style switches (defaults are GPT-2's):
  norm            layernorm | rmsnorm           norm_position  pre | post
  position        learned | sinusoidal | rope   activation     gelu | gelu_tanh | relu | swiglu
                                                                | geglu
  bias            biases in linear layers and LayerNorm
  tie_embeddings  output projection shares the token embedding (encdec: also source = target)
  init            scaled_normal (GPT-2/Llama: N(0, init_std), residual projections / sqrt(2L))
                  | xavier (the 2017 Transformer)
Loss (`loss`): plain (full logits, then cross-entropy on an fp32 copy) | chunked (row chunks of
`loss_chunk_rows`; no (B·T, V) tensor ever exists). Same result; see pretrain/model/loss.py.
Parametrization (`parametrization`, decoders): standard | mup (muP: the hyperparameters tuned on a
proxy of d_model = `mup_base_width` transfer to wider models; see pretrain/model/mup.py).
Document masking (`doc_masking`, packed decoder rows): `doc_mask_kernel` flex (a flex_attention
BlockMask: tiles with no allowed pair are skipped, fused kernels when compiled on a GPU) | dense
(a (B, 1, T, T) boolean SDPA mask, the reference) | auto (flex on CUDA, dense elsewhere).
Cross-field checks are field validators, so each problem is reported under its own key and all
of them come out in one error.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from pretrain.configlib import Section

VOCAB_MULTIPLE = 64


def padded_vocab_size(n_tokens: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """A tokenizer's vocabulary rounded up to a multiple of 64 (faster matmuls on GPUs)."""
    return -(-n_tokens // multiple) * multiple


# Keys that left this section: a config still naming one gets "moved to ..." under that key.
MOVED_KEYS = {
    "activation_checkpointing": "train.activation_checkpointing (it changes no parameter: the "
                                "trainer applies it from outside the model)",
}


class ModelConfig(Section):
    family: Literal["decoder", "encdec"] = Field(
        description="decoder: a GPT/Llama-style causal LM; encdec: an encoder-decoder (T5, the "
        "2017 Transformer)")
    vocab_size: int | None = Field(
        default=None, ge=2, description="output classes; null: the data's tokenizer, rounded "
        "up to a multiple of 64")
    max_seq_len: int = Field(ge=1, description="positions: the decoder's context; encdec: the "
                             "longest source and target")
    d_model: int = Field(ge=1, description="width of the residual stream")
    n_heads: int = Field(ge=1, description="attention heads; must divide d_model")
    n_kv_heads: int | None = Field(
        default=None, ge=1, validate_default=True, description="key/value heads (grouped-query "
        "attention); must divide n_heads; null: n_heads")
    d_ff: int | None = Field(default=None, ge=1,
                             description="hidden width of the feed-forward; null: 4 * d_model")
    n_layers: int | None = Field(default=None, ge=1, validate_default=True,
                                 description="decoder blocks (family decoder only, required)")
    n_encoder_layers: int | None = Field(
        default=None, ge=1, validate_default=True,
        description="encoder blocks (family encdec only, required)")
    n_decoder_layers: int | None = Field(
        default=None, ge=1, validate_default=True,
        description="decoder blocks (family encdec only, required)")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0,
                           description="dropout on attention, residual branches and embeddings")
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0,
                                   description="label smoothing of the training loss")
    loss: Literal["plain", "chunked"] = Field(
        "plain", description="plain: full logits, then cross-entropy on an fp32 copy; chunked: "
        "loss_chunk_rows rows at a time, no (B·T, V) tensor ever exists (same result; "
        "pretrain/model/loss.py)")
    loss_chunk_rows: int = Field(default=4096, ge=1,
                                 description="loss chunked: rows of logits at a time")
    norm: Literal["layernorm", "rmsnorm"] = Field("layernorm", description="normalisation layer")
    norm_position: Literal["pre", "post"] = Field(
        "pre", description="pre: norm before each sublayer (GPT-2, Llama, T5); post: after the "
        "residual add (the 2017 Transformer)")
    norm_eps: float = Field(default=1e-5, gt=0.0, description="epsilon of the norm layers")
    position: Literal["learned", "sinusoidal", "rope", "t5_relative"] = Field(
        default="learned", validate_default=True, description="learned | sinusoidal (needs an "
        "even d_model) | rope (an even head dimension) position embeddings; t5_relative "
        "(encoder-decoders): T5's bucketed relative position bias, one table per stack shared "
        "by its layers' self-attention (T5 v1.1)")
    rope_theta: float = Field(default=10000.0, gt=0.0, description="rope: the base of the "
                              "rotation frequencies")
    relative_buckets: int = Field(
        default=32, ge=4, description="t5_relative: buckets per stack (the encoder's split "
        "between the two directions); offsets below half the buckets of a direction get one "
        "each, the rest are log-spaced up to relative_max_distance (T5: 32)")
    relative_max_distance: int = Field(
        default=128, ge=2, description="t5_relative: farther offsets share the last bucket "
        "(T5: 128)")
    activation: Literal["gelu", "gelu_tanh", "relu", "swiglu", "geglu"] = Field(
        "gelu", description="feed-forward activation; gelu: exact (erf); gelu_tanh: its tanh "
        "approximation (OpenAI's GPT-2, HF \"gelu_new\"); swiglu, geglu: gated (Llama, T5 v1.1)")
    bias: bool = Field(True, description="biases in linear layers and LayerNorm")
    tie_embeddings: bool = Field(
        True, description="the output projection shares the token embedding (encdec: source "
        "and target share one embedding too)")
    scale_embeddings: bool = Field(
        False, description="multiply token embeddings by sqrt(d_model) (the 2017 paper)")
    init: Literal["scaled_normal", "xavier"] = Field(
        "scaled_normal", description="scaled_normal: N(0, init_std), residual projections / "
        "sqrt(2 * layers) (GPT-2, Llama); xavier: the 2017 Transformer")
    init_std: float = Field(default=0.02, gt=0.0, description="scaled_normal: the standard "
                            "deviation")
    doc_masking: bool = Field(
        default=False, validate_default=True, description="decoders: attention stays within "
        "each packed document (documents do not see each other)")
    doc_mask_kernel: Literal["auto", "flex", "dense"] = Field(
        "auto", description="document masking: flex (a flex_attention BlockMask, no dropout) | "
        "dense (a (B, 1, T, T) boolean SDPA mask, the reference) | auto (flex on a GPU with "
        "dropout 0, dense elsewhere)")
    parametrization: Literal["standard", "mup"] = Field(
        default="standard", validate_default=True, description="standard | mup (decoders; "
        "pretrain/model/mup.py, docs/tuning.md): with m = d_model / mup_base_width, hidden "
        "matrices start at init_std/sqrt(m) with Adam lr/m and weight decay *m, logits *1/m, "
        "attention sqrt(mup_base_head_dim)/head_dim; tuned hyperparameters carry over to wider "
        "models")
    mup_base_width: int | None = Field(
        default=None, ge=1, validate_default=True, description="mup: the d_model the "
        "hyperparameters were tuned at (required with mup; ignored by standard, so one config "
        "sweeps both)")
    mup_base_head_dim: int | None = Field(
        default=None, ge=1, description="mup: the proxy's head dimension (null: this model's "
        "own, i.e. heads added with width, attention 1/sqrt(head_dim); set it when the heads "
        "widen instead: muP's 1/head_dim)")
    # Moved away (see MOVED_KEYS); never set, never dumped: only here to name its new place.
    activation_checkpointing: Any = Field(default=None, exclude=True, repr=False)

    # --- cross-field checks (each sees the fields declared above it in info.data) ---

    @field_validator("n_heads")
    @classmethod
    def _heads_divide_width(cls, v: int, info: ValidationInfo) -> int:
        d = info.data.get("d_model")
        if d is not None and d % v:
            raise ValueError(f"n_heads={v} must divide d_model={d}")
        return v

    @field_validator("n_kv_heads")
    @classmethod
    def _kv_heads_divide_heads(cls, v: int | None, info: ValidationInfo) -> int | None:
        h = info.data.get("n_heads")
        if v is not None and h is not None and h % v:
            raise ValueError(f"n_kv_heads={v} must divide n_heads={h}")
        return v

    @field_validator("n_layers", "n_encoder_layers", "n_decoder_layers")
    @classmethod
    def _layers_match_family(cls, v: int | None, info: ValidationInfo) -> int | None:
        family = info.data.get("family")
        wanted = {"decoder": ("n_layers",), "encdec": ("n_encoder_layers", "n_decoder_layers")}
        if family not in wanted:
            return v
        if info.field_name in wanted[family] and v is None:
            raise ValueError(f"required for family '{family}'")
        if info.field_name not in wanted[family] and v is not None:
            raise ValueError(f"not used by family '{family}' (use {', '.join(wanted[family])})")
        return v

    @field_validator("position")
    @classmethod
    def _rope_needs_even_head_dim(cls, v: str, info: ValidationInfo) -> str:
        d, h = info.data.get("d_model"), info.data.get("n_heads")
        if v == "rope" and d and h and (d // h) % 2:
            raise ValueError(f"rope needs an even head dimension, got d_model/n_heads={d // h}")
        if v == "sinusoidal" and d and d % 2:
            raise ValueError(f"sinusoidal positions need an even d_model, got {d}")
        if v == "t5_relative" and info.data.get("family") == "decoder":
            raise ValueError("t5_relative is an encoder-decoder option (decoders: learned, "
                             "sinusoidal or rope)")
        return v

    @field_validator("activation_checkpointing")
    @classmethod
    def _moved(cls, v: Any, info: ValidationInfo) -> None:
        raise ValueError(f"moved to {MOVED_KEYS[info.field_name]}")

    @field_validator("doc_masking")
    @classmethod
    def _doc_masking_is_decoder_only(cls, v: bool, info: ValidationInfo) -> bool:
        if v and info.data.get("family") == "encdec":
            raise ValueError("document masking applies to packed decoder batches only")
        return v

    @field_validator("doc_mask_kernel")
    @classmethod
    def _flex_has_no_dropout(cls, v: str, info: ValidationInfo) -> str:
        if v == "flex" and info.data.get("dropout"):
            raise ValueError("flex_attention has no attention dropout: use dense (or auto), "
                             "or dropout 0")
        return v

    @field_validator("parametrization")
    @classmethod
    def _mup_fits_the_model(cls, v: str, info: ValidationInfo) -> str:
        if v != "mup":
            return v
        d = info.data
        problems = []
        if d.get("family") == "encdec":
            problems.append("muP is implemented for decoders (model.family=decoder); an "
                            "encoder-decoder takes parametrization standard")
        if d.get("init") == "xavier":
            problems.append("muP scales init_std (init scaled_normal), not init xavier")
        if d.get("scale_embeddings"):
            problems.append("scale_embeddings=true multiplies the embeddings by sqrt(d_model): "
                            "muP keeps them width-independent (set it false)")
        if problems:
            raise ValueError("parametrization mup: " + "; ".join(problems))
        return v

    @field_validator("mup_base_width")
    @classmethod
    def _mup_needs_base_width(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is None and info.data.get("parametrization") == "mup":
            raise ValueError("required with parametrization mup: the d_model of the proxy "
                             "model the hyperparameters were tuned at (m = d_model / "
                             "mup_base_width)")
        return v

    # --- derived values ---

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ffn_dim(self) -> int:
        return self.d_ff or 4 * self.d_model

    def doc_kernel(self, device_type: str) -> str:
        """The document-masking kernel used on a device: "flex" or "dense"."""
        if self.doc_mask_kernel == "auto":
            return "flex" if device_type == "cuda" and not self.dropout else "dense"
        return self.doc_mask_kernel

    @property
    def chunk_rows(self) -> int | None:
        """Rows per chunk of the chunked loss, or None for the plain one."""
        return self.loss_chunk_rows if self.loss == "chunked" else None

    @property
    def total_layers(self) -> int:
        if self.family == "decoder":
            return self.n_layers
        return self.n_encoder_layers + self.n_decoder_layers


def saved_model_config(data: dict[str, Any]) -> ModelConfig:
    """A ModelConfig from a checkpoint's or export's saved config: keys that have since moved
    out of this section (they never changed a parameter) are dropped, so old runs still load."""
    return ModelConfig.model_validate({k: v for k, v in data.items() if k not in MOVED_KEYS})

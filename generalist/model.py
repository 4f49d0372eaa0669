"""The generalist model: one decoder transformer over the token stream of every modality.

Reading order: the config and its presets, the embeddings (ids, image patches, positions), rotary position
encoding, the decoder block, the model with its loss. Saving and loading live in checkpoint.py.

Design choices, and where we depart from Gato (Reed et al., 2022):
- Embeddings are summed per token (Gato section 2.2 and appendix C): the id table; image patches through one
  pre-activation ResNet-v2 block (GroupNorm, GELU) and a projection, plus learned row and column embeddings of
  the patch's position bucket (sampled inside its interval in training, its middle in evaluation); learned
  local positions for non-patch observation tokens; one learned embedding shared by all action tokens. At a
  patch the pixel embedding replaces the id embedding (the placeholder id carries nothing).
- `centre_patches` subtracts from every patch embedding the mean embedding of its image's patches. On images
  that are mostly one flat colour (Pong's field, the caption scenes) the patch block, whose GroupNorm scales a
  flat patch up to unit variance, gives every patch one large shared vector and the objects a small deviation
  from it (7.0 against 0.4 in norm at initialization on Pong); training then grew the shared part to 521 while
  the deviations stayed near 0.1 (0.01% of a patch's norm), so every patch looked alike after the blocks'
  LayerNorm and the agent never read the ball (docs/RESULTS.md, issue 18). Centring removes the shared part by
  construction; what is lost is only the image's mean, the same for all its patches.
  With `route_tokens` each route is centred over its own tokens of the image; `centre_colour_tokens=False`
  leaves the colour tokens whole. Centred, a colour token says an object's colours less the mean of its image's
  patches, which a striped or checked background moves: linear probes of the trained colour route read the
  colour of 99.5% of held-out objects on unseen backgrounds whole and 90.0% centred, the captions 88.2%
  (`bench.route_probe --centred`, docs/RESULTS.md, issue 20). Whole, they gave 99.5% of those colours, but the
  transformer then named one attribute from the other (seed 0 the shapes from the colour, seed 1 the colour
  from the shape): measured, not in any preset. `colour_centre_gate` starts centred and learns, per dimension,
  how much of the image's mean a colour token loses, so that the learning starts as the centred tokens' did.
- `patch_input` chooses what the patch block reads. "pixels" is Gato's. "pixels+mask" adds a colour-free
  channel, the patch's foreground mask: each pixel's RGB distance from the median colour of the patch's border
  (mostly background: a scene object stays inside its cell), over the patch's largest distance. A convolution
  mixes channels linearly, so it cannot compute such a colour-invariant outline itself. "mask+colour" goes
  further: the block reads the mask alone, and the colour enters beside it as a linear map of the patch's
  background and foreground mean colours, so the shape features cannot depend on the colour. The caption
  models read a held-out colour-shape pair's shape through its colour (docs/RESULTS.md, issue 20). Measured:
  alone, "mask+colour" lost the colour (training shrank the linear colour map until every object read purple);
  with the colour words weighted and shuffled, and the two routes in two tokens (`route_tokens`), it is the
  language preset's recipe (config.py, `LANGUAGE_PATCHES`).
- `route_norm` layer-normalizes (no learned scale) each of the two routes of "mask+colour" before they are
  summed. Trained, the shape route's output grows far past the colour route's (mean norms 109.0 against 1.6 on
  a run that named nearly every object "white", though a linear probe of its colour route alone named the
  colour 99-100% right: docs/RESULTS.md, issue 20): the colour is in the token, too small to be read beside the
  shape. Normalized, each route enters at the same scale whatever training does to it. Measured on seed 1: the
  held-out pairs' colour still named from their shape, and their shape lost too (exact captions 40.5 → 24.5%):
  not the cause, not adopted.
- `route_tokens` gives each caption patch two tokens (the tokenizer repeats it: `TokenLayout.caption_route_tokens`),
  the first read by the shape route alone, the second by the colour route alone, both at the patch's position.
  Summed in one token, the routes were read as a pair: with `route_norm` both were linearly decodable from their
  routes (99-100%) and the captioner still named a held-out pair's colour as training's pair with that shape
  (docs/RESULTS.md, issue 20). Apart, the colour word can be read from a token that holds no shape. Measured
  on seed 1 within the language recipe: held-out pairs' colour 53.4 → 98.7%, and the shape lost (16.7%, the
  shape route itself no longer encoding it) while a quarter of the scene rows left the shape words unscored;
  with every row scored, both read: exact captions 40.5 → 71.0% (seed 1), 54.0 → 79.5% (seed 0). The
  language preset's.
- `mask_background` says what the mask measures a pixel from. "median", one colour per patch (the border's
  median), keeps an object that crosses the patch's border (Atari's paddles) but fails on a background of two
  colours: on stripes and checks one of them reads as foreground, and a linear probe of a trained shape route
  named the shapes of scenes on such backgrounds 57.5% right against 96.4% on plain ones. "nearest" measures
  each pixel from its nearest border colours (`MASK_NEAREST_K`): the same probe, on the same trained block,
  92.2% (docs/RESULTS.md, issue 20).
- `caption_patch_input` gives the images outside episodes (captions, beside text) a patch block of their own,
  reading as it says, while episodes' observations keep `patch_input`'s. The two were chosen apart: the Atari
  frames read their pixels beside the mask (the stacked frames' channels carry the ball's motion, which a mask
  alone loses), the captions read the mask and its colours apart (their held-out colour-shape pairs). Empty, one
  block reads every image.
- The patch block starts with a strided convolution that cuts each 16x16 patch to a (16/s)x(16/s) grid before
  the residual block. Gato does not size the block; on this CPU a full-resolution 3x3 convolution per patch
  costs as much as a small transformer per token (docs/FACTS.md), so width and stride are config fields, set by
  measurement to 64 channels on a 4x4 grid (stride 4): 4x cheaper than 64 channels on 8x8 (docs/BENCHMARKS.md).
- `value_frequencies` adds to each continuous-value token (observations after mu-law, continuous actions) a
  learned linear map of smooth features of its bin's centre. Gato embeds each of the 1,024 bins as an
  independent row of the id table, so the model must learn from data alone that bin 500 lies between 499 and
  501, and a bin that training rarely saw keeps its random row, so the states an agent drifts into off the
  expert's path may read as noise (teacher-forced 88-93% against 37-41% on-policy on Pendulum and LunarLander,
  docs/RESULTS.md). The features give every bin an ordered meaning shared with its neighbours; the id row
  still adds what is particular to a bin. The token stream and the output head are unchanged.
- The order of tokens across the sequence is encoded by rotary embeddings (RoPE, Su et al., 2021) on queries
  and keys; Gato's paper does not say how it encodes it. Rotary scores depend only on the distance between
  two tokens, so cached keys never need re-encoding as the context grows, and no learned table caps the
  length. Positions are counted from the first token of the context the model sees, so a context that slid
  forward is re-encoded from 0 exactly as a fresh forward would (agent.py).
- Pre-norm blocks (LayerNorm), causal attention through `scaled_dot_product_attention`, a GEGLU feed-forward
  (Gato appendix C.1), a final norm and an output head tied to the id table by default: the table holds every
  id the head predicts, tying saves `table_size x width` parameters (a fifth of the `tiny` model), and it is
  what GPT-2 and nanoGPT do. `tie_embeddings=False` gives a separate head.
- The loss (Gato section 2.3) is next-token cross-entropy on text and action targets only. Target positions
  are gathered before the head, so no logits are made where no loss is taken: on control data most positions
  carry none, and the head over the whole table is the largest matmul of a small model.
- Continuous action targets may be smoothed (`action_sigma`): the target is a Gaussian over neighbouring bins
  ("HL-Gauss", Farebrother et al., 2024) instead of the one exact bin, so a near miss costs less than a far one;
  the logged losses stay the exact bin's cross-entropy, comparable across runs.
- Sizes that change from batch to batch (a batch's length, gathered targets, image patches, continuous values,
  cached keys) are padded up to a multiple of `SHAPE_MULTIPLE` before a matmul or convolution. In bf16 on a CPU, oneDNN
  compiles a kernel for every new shape and never frees all of it (about 0.9 MB a shape): a control run's
  process held 14 GB after 70 minutes before the padding (docs/BENCHMARKS.md).
- `forward(batch)` is pure: no episode state lives on the module. A KV cache, when given to `hidden`, is a
  separate object owned by the agent (agent.py) that the attention layers read and write.

Dimension key used in shape comments:
    b  batch rows           t  tokens             d  model width           h  attention heads
    k  head width (d / h)   f  feed-forward width v  table size (ids)     m  gathered target tokens
    n  image patches        C  image channels     c  patch-block channels   p  pixels per patch side
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from generalist.batch import Batch
from generalist.tokenizers import (
    ACTION_POSITION,
    N_BINS,
    N_POSITION_BUCKETS,
    PATCH_SIZE,
    PIXEL_DIVISOR,
    TextTokenizerConfig,
    TokenKind,
    TokenLayout,
)

# ----------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ModelConfig:
    """Every size of the model; saved as config.json beside the weights, which are rebuilt from it alone."""

    n_layer: int = 4
    """Decoder blocks."""
    n_head: int = 4
    """Attention heads; `d_model / n_head` is the head width, which must be even (rotary pairs)."""
    d_model: int = 256
    """Width of the residual stream and of every embedding."""
    d_ff: int = 1024
    """Hidden width of the GEGLU feed-forward: 4 x d_model, the ratio of Gato appendix C.1."""
    context: int = 1024
    """Longest sequence the model reads, in tokens (Gato trains on 1024)."""
    dropout: float = 0.0
    """Dropout on embeddings, attention weights and residual branches (training only)."""
    text_vocab_size: int = TextTokenizerConfig().vocab_size
    """Text vocabulary V of the SentencePiece model (default: the shipped one's); the layout follows from it."""
    image_channels: int = 3
    """Channels of image patches: 3 for RGB; at least those of the stacked frames (`frame_stack` frames of 3 or
    1 channels); images with fewer channels (an RGB caption image) get zero channels."""
    frame_stack: int = 1
    """Consecutive frames one timestep of a control task's image holds, as the channels of its patches (1: the
    single recorded frame; the Multi-Game Decision Transformer and JAT stack 4)."""
    frame_colour: str = "rgb"
    """Colour of the stacked frames: rgb (3 channels each) or gray (1 each, BT.601 luma)."""
    frame_size: int = 0
    """Side in pixels of each stacked frame, shrunk from the recorded one by a block maximum (0: as recorded;
    48 turns an 80x80 Atari frame's 25 patches into 9)."""
    patch_size: int = PATCH_SIZE
    """Pixels per side of an image patch (Gato: 16)."""
    patch_channels: int = 64
    """Channels of the patch ResNet block (Gato does not give it; chosen by measurement, docs/BENCHMARKS.md)."""
    patch_stride: int = 4
    """Stride of the patch block's first convolution: the residual block runs on a patch_size/stride grid
    (4: a 4x4 grid, each cell 4x4x3 = 48 pixels read by 64 channels, so the stem can keep them all)."""
    patch_groups: int = 8
    """GroupNorm groups in the patch block."""
    centre_patches: bool = False
    """Subtract from each patch embedding the mean of its image's patch embeddings (see the module docstring)."""
    centre_colour_tokens: bool = True
    """With `centre_patches` and `route_tokens`, centre the caption patches' colour tokens too, not only their
    shape tokens (see the module docstring)."""
    colour_centre_gate: bool = False
    """With centred colour tokens, subtract a learned fraction of their image's mean, one per dimension, starting
    at 1 (centred), so training may keep an object's absolute colour where it helps (see the module docstring)."""
    patch_input: str = "pixels"
    """What the patch block reads (`PATCH_INPUTS`): the pixels; the pixels and a colour-free foreground mask; or
    the mask through the block and the patch's two mean colours beside it (see the module docstring)."""
    mask_background: str = "median"
    """What the foreground mask measures a pixel's distance from (`MASK_BACKGROUNDS`, with a mask in
    `patch_input`): "median", the median colour of the patch's border, robust to an object crossing the border
    (Atari's paddles and ball); "nearest", the nearest border colours, so that a background of two colours
    (stripes, checks) reads as background too (see the module docstring)."""
    caption_patch_input: str = ""
    """What a second patch block, for the images outside episodes (captions), reads (`PATCH_INPUTS`); "": no
    second block, `patch_input`'s reads them too (see the module docstring)."""
    caption_mask_background: str = "median"
    """`mask_background` of that second block."""
    route_norm: bool = False
    """With "mask+colour" (either block), each route's output layer-normalized before the two are summed, so
    neither drowns the other (see the module docstring)."""
    route_tokens: bool = False
    """With a "mask+colour" block reading the captions, each caption patch as two tokens, its shape route then its
    colour route (see the module docstring)."""
    value_frequencies: int = 0
    """Add to each continuous-value token's id embedding a learned linear map of smooth features of its bin's
    centre u in [-1, 1]: u, and the sine and cosine of pi 2^j u for j < value_frequencies (0: the id table
    alone, Gato's embedding). Gives every bin an ordered, shared meaning (see the module docstring)."""
    n_position_buckets: int = N_POSITION_BUCKETS
    """Row and column buckets of patch positions (Gato appendix C: 128)."""
    max_local_positions: int = 512
    """Learned local positions: the most non-patch tokens one observation may hold (Gato: 512)."""
    rope_base: float = 10_000.0
    """Base of the rotary frequencies (RoFormer's value)."""
    tie_embeddings: bool = True
    """Output head shares the id table's weights (fewer parameters; see the module docstring)."""

    def __post_init__(self) -> None:
        sizes = (self.n_head, self.d_model, self.patch_channels, self.patch_size, self.n_position_buckets,
                 self.image_channels, self.patch_groups, self.patch_stride, self.frame_stack)
        if min(sizes) < 1:
            raise ValueError("heads, width, patch sizes, channels, groups, buckets and frames must be at least 1")
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError(f"d_model {self.d_model} must split into {self.n_head} heads of even width")
        if self.patch_size % self.patch_stride:
            raise ValueError(f"patch_stride {self.patch_stride} must divide patch_size {self.patch_size}")
        if self.patch_channels % self.patch_groups:
            raise ValueError(f"patch_channels {self.patch_channels} must split into {self.patch_groups} groups")
        if self.patch_input not in PATCH_INPUTS:
            raise ValueError(f"patch_input must be one of {PATCH_INPUTS}, got {self.patch_input!r}")
        if self.mask_background not in MASK_BACKGROUNDS:
            raise ValueError(f"mask_background must be one of {MASK_BACKGROUNDS}, got {self.mask_background!r}")
        if self.caption_patch_input not in ("", *PATCH_INPUTS):
            raise ValueError(f"caption_patch_input must be empty or one of {PATCH_INPUTS}, "
                             f"got {self.caption_patch_input!r}")
        if self.caption_mask_background not in MASK_BACKGROUNDS:
            raise ValueError(f"caption_mask_background must be one of {MASK_BACKGROUNDS}, "
                             f"got {self.caption_mask_background!r}")
        if self.route_norm and "mask+colour" not in (self.patch_input, self.caption_patch_input):
            raise ValueError(f"route_norm scales the two routes of 'mask+colour': no block reads that (patch_input "
                             f"{self.patch_input!r}, caption_patch_input {self.caption_patch_input!r})")
        if self.route_tokens and (self.caption_patch_input or self.patch_input) != "mask+colour":
            raise ValueError(f"route_tokens reads the two routes of 'mask+colour' apart: the captions' block reads "
                             f"{self.caption_patch_input or self.patch_input!r}")
        if self.colour_centre_gate and not (self.centre_patches and self.route_tokens and self.centre_colour_tokens):
            raise ValueError("colour_centre_gate scales the centring of the colour tokens: it needs centre_patches, "
                             "route_tokens and centre_colour_tokens")
        if not 0 <= self.value_frequencies <= 10:
            raise ValueError(f"value_frequencies must lie in 0..10 (at 10 the finest period is 2 bins), "
                             f"got {self.value_frequencies}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if min(self.n_layer, self.d_ff, self.context, self.text_vocab_size, self.max_local_positions) < 1:
            raise ValueError("n_layer, d_ff, context, text_vocab_size and max_local_positions must be positive")
        self.layout  # noqa: B018 -- building the layout checks the image and text settings

    @property
    def layout(self) -> TokenLayout:
        """The token id layout this model reads and writes."""
        return TokenLayout(self.text_vocab_size, self.image_channels, self.frame_stack, self.frame_colour,
                           self.frame_size, self.route_tokens)

    @property
    def head_width(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_head

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for config.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """Rebuild from `to_dict`'s values, checked before anything is allocated: an unknown key, a value of the
        wrong type, or a model past `MAX_PARAMETERS` is an error, never silently dropped or built."""
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}")
        for f in fields(cls):
            if f.name not in values:
                continue
            value, kind = values[f.name], type(f.default)
            # bool is an int and an int is a valid float in JSON; anything else must be of the default's type.
            valid = isinstance(value, bool) if kind is bool else (
                not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else kind))
            if not valid:
                raise ValueError(f"model config {f.name}: expected {kind.__name__}, got {value!r}")
            if kind in (int, float) and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"model config {f.name}: expected a finite number >= 0, got {value!r}")
        config = cls(**values)
        if config.parameter_estimate() > MAX_PARAMETERS:
            raise ValueError(f"model config: about {config.parameter_estimate():,} parameters, more than the "
                             f"{MAX_PARAMETERS:,} a checkpoint may ask for here")
        return config

    def parameter_estimate(self) -> int:
        """About how many parameters this config builds (the blocks and the id table), computed without building."""
        per_block = 4 * self.d_model**2 + 3 * self.d_model * self.d_ff
        return self.n_layer * per_block + self.layout.table_size * self.d_model * (1 if self.tie_embeddings else 2)


MAX_PARAMETERS = 20_000_000_000
"""Largest model a checkpoint's config may ask for (80 GB in fp32): a damaged config is refused, not allocated."""


# Presets are named code (docs/STYLE.md item 6). The paper's three come from Gato appendix C.1. The paper
# does not say whether its feed-forward width counts the GEGLU's gate; ours is the width of the value and of
# the gate each, so these presets hold 1.64B, 475M and 87M parameters where the paper counts 1.18B, 364M and
# 79M. Their patch block is our choice (the paper does not size it): 128 channels on an 8x8 grid, still cheap
# next to blocks of that width.
_GATO_PATCHES = {"patch_channels": 128, "patch_stride": 2}


def gato_1_18b(**overrides: Any) -> ModelConfig:
    """Gato's largest model: 24 layers, 16 heads, width 2048, feed-forward 8192 (appendix C.1)."""
    return ModelConfig(**{"n_layer": 24, "n_head": 16, "d_model": 2048, "d_ff": 8192, **_GATO_PATCHES, **overrides})


def gato_364m(**overrides: Any) -> ModelConfig:
    """Gato's 364M model: 12 layers, 12 heads, width 1536, feed-forward 6144 (appendix C.1)."""
    return ModelConfig(**{"n_layer": 12, "n_head": 12, "d_model": 1536, "d_ff": 6144, **_GATO_PATCHES, **overrides})


def gato_79m(**overrides: Any) -> ModelConfig:
    """Gato's 79M model: 8 layers, 24 heads, width 768, feed-forward 3072 (appendix C.1)."""
    return ModelConfig(**{"n_layer": 8, "n_head": 24, "d_model": 768, "d_ff": 3072, **_GATO_PATCHES, **overrides})


def tiny(**overrides: Any) -> ModelConfig:
    """4 layers of width 256 (6.1M parameters): about 3,000 training tokens/s fp32 and 5,000 bf16 on this
    2-core CPU (docs/BENCHMARKS.md); for tests, smoke runs and short experiments."""
    return ModelConfig(**{"n_layer": 4, "n_head": 4, "d_model": 256, "d_ff": 1024, **overrides})


def small(**overrides: Any) -> ModelConfig:
    """6 layers of width 384 (16.9M parameters): about 1,100 training tokens/s fp32 and 2,100 bf16 here, the
    largest we measured that stays above 2,000 in bf16 (8x384: 1,800; 6x512: 1,600; 8x512: 1,150)."""
    return ModelConfig(**{"n_layer": 6, "n_head": 6, "d_model": 384, "d_ff": 1536, **overrides})


PRESETS: dict[str, Callable[..., ModelConfig]] = {
    "tiny": tiny,
    "small": small,
    "gato-79m": gato_79m,
    "gato-364m": gato_364m,
    "gato-1.18b": gato_1_18b,
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset's config, with fields overridden by keyword."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name](**overrides)


# ------------------------------------------------------------------------------------------- embeddings


def position_buckets(intervals: torch.Tensor, training: bool) -> torch.Tensor:
    """Bucket ranges (n, 2) [lo, hi) to one bucket each (n,): uniform inside in training, the middle otherwise.

    The same rule as `generalist.tokenizers.sample_position_buckets`, in torch on the model's device.
    """
    lo, hi = intervals[:, 0], intervals[:, 1]
    if not training:
        return (lo + hi) // 2
    offset = (torch.rand(lo.shape, device=lo.device) * (hi - lo)).long()
    return lo + torch.minimum(offset, hi - lo - 1)  # rand < 1, but guard float rounding up to hi


PATCH_INPUTS = ("pixels", "pixels+mask", "mask+colour")
PIXEL_SCALE = 1.0 / PIXEL_DIVISOR
"""Pixels reach the model in [-PIXEL_SCALE, PIXEL_SCALE] (tokenizers/images.py)."""
MASK_FLOOR = 0.05
"""The least a patch's largest distance counts as when dividing by it (pixels span 0.5 after scaling, RGB
distances up to 0.87; 0.05 is about 25 of 255): a patch of flat background or faint noise keeps a faint mask
instead of its noise blown up to 1."""
OBJECT_CONTRAST = 0.2
"""The least largest `foreground_distance` of a patch that holds an object (about 100 of 255; scenes draw each
object at least 80 from 99% of its background, `scenes.MIN_CONTRAST`). By the nearest border colours, over 300
48-pixel train scenes per style: 93.9% of the textured scenes' object patches pass it and 4.9% of their empty
ones; 100% and 0% on the plain scenes; 93.3% and 0% on the varied ones."""
MASK_BACKGROUNDS = ("median", "nearest")
MASK_NEAREST_K = 8
"""With `mask_background="nearest"`, which nearest border colour a pixel is measured from: an object may cover up
to k - 1 of a 16-pixel patch's 60 border pixels and keep its outline."""


def border_pixels(patches: torch.Tensor) -> torch.Tensor:
    """Per patch (n, C, p, p), the colours (n, C, 4p - 4) of its border pixels, once each."""
    return torch.cat([patches[..., 0, :], patches[..., -1, :], patches[..., 1:-1, 0], patches[..., 1:-1, -1]], dim=-1)


def border_colour(patches: torch.Tensor) -> torch.Tensor:
    """Per patch (n, C, p, p), the median colour (n, C) of its border pixels: mostly background."""
    return border_pixels(patches).median(dim=-1).values


def nearest_border_distance(patches: torch.Tensor, k: int = MASK_NEAREST_K) -> torch.Tensor:
    """Per patch (n, C, p, p), each pixel's RGB distance (n, 1, p, p) from the k-th nearest colour among the
    patch's border pixels: about 0 on a background of any colours that also cross the border (stripes, checks),
    large on an object, unless the object covers k or more border pixels."""
    n, _, p, _ = patches.shape
    # Exact differences, not cdist's matrix-product shortcut: a flat patch must give 0 everywhere, as the median's
    # mask does (its colour route then reads no foreground), not rounding noise that the mask's division scales up.
    pixels, border = patches.flatten(2).transpose(1, 2), border_pixels(patches).transpose(1, 2)  # (n, p*p | 4p-4, C)
    distances = torch.cdist(pixels, border, compute_mode="donot_use_mm_for_euclid_dist")  # (n, p*p, 4p-4)
    return distances.kthvalue(k, dim=-1).values.view(n, 1, p, p)


def foreground_distance(
    patches: torch.Tensor, background: torch.Tensor, mask_background: str = "median",
) -> torch.Tensor:
    """Per patch (n, C, p, p), each pixel's RGB distance (n, 1, p, p) from the patch's background: the colour
    `background` (n, C) with `mask_background="median"`, the patch's border colours with "nearest"
    (`nearest_border_distance`)."""
    if mask_background == "nearest":
        return nearest_border_distance(patches)
    # Not .norm(dim=1): on this CPU torch reduces across channels 25x slower that way (docs/BENCHMARKS.md).
    return (patches - background[..., None, None]).square().sum(dim=1, keepdim=True).sqrt()


def foreground_mask(patches: torch.Tensor, background: torch.Tensor, mask_background: str = "median") -> torch.Tensor:
    """Per patch (n, C, p, p), a colour-free outline (n, 1, p, p) in [0, 1]: each pixel's `foreground_distance`
    over the patch's largest distance (at least `MASK_FLOOR`). A flat object on a flat background gives 1 on the
    object and 0 elsewhere, whatever the two colours."""
    return scaled_mask(foreground_distance(patches, background, mask_background))


def scaled_mask(distance: torch.Tensor) -> torch.Tensor:
    """Distances (n, 1, p, p) over each patch's largest, at least `MASK_FLOOR`: a mask in [0, 1]."""
    return distance / distance.amax(dim=(2, 3), keepdim=True).clamp_min(MASK_FLOOR)


def centred(mask: torch.Tensor) -> torch.Tensor:
    """A foreground mask in [0, 1] moved to the pixels' range, [-0.25, 0.25], as the stem reads it."""
    return (mask - 0.5) * (2 * PIXEL_SCALE)


class PatchEncoder(nn.Module):
    """Image patches (n, C, p, p) to (n, d): a strided stem, one pre-activation ResNet-v2 block, a projection; what
    the stem reads is set by `ModelConfig.patch_input`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c, s, g = config.patch_channels, config.patch_stride, config.patch_groups
        self.patch_input = config.patch_input
        self.mask_background = config.mask_background
        stem_channels = {"pixels": config.image_channels, "pixels+mask": config.image_channels + 1,
                         "mask+colour": 1}[config.patch_input]
        # background and foreground mean colours, beside the mask's shape
        self.colour = (nn.Linear(2 * config.image_channels, config.d_model)
                       if config.patch_input == "mask+colour" else None)
        self.route_norm = config.route_norm and self.colour is not None
        self.stem = nn.Conv2d(stem_channels, c, kernel_size=s, stride=s)
        self.norm1 = nn.GroupNorm(g, c)
        self.conv1 = nn.Conv2d(c, c, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(g, c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, padding=1)
        self.norm_out = nn.GroupNorm(g, c)  # pre-activation nets end with norm + activation before the head
        self.proj = nn.Linear(c * (config.patch_size // s) ** 2, config.d_model)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        if self.patch_input == "pixels":
            return self.block(patches)
        pixels = patches.float()
        background, distance = self._distance(pixels)
        mask = scaled_mask(distance)
        centred_mask = centred(mask)
        if self.colour is None:
            return self.block(torch.cat([patches, centred_mask.to(patches.dtype)], dim=1))
        return self._shape_route(centred_mask, patches.dtype) + self._colour_route(
            pixels, background, mask, patches.dtype)

    def routes(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """With `patch_input="mask+colour"`, the two parts of `forward`'s output apart (n, 2, d): what the mask's
        shape gives (without the patch's colours), then what its two mean colours give (without the shape); and
        which patches hold an object (n,) bool, by `OBJECT_CONTRAST`. One mask for both."""
        if self.colour is None:
            raise ValueError(f"only patch_input='mask+colour' has its shape and colour routes apart, not "
                             f"{self.patch_input!r}")
        pixels = patches.float()
        background, distance = self._distance(pixels)
        mask, peak = scaled_mask(distance), distance.amax(dim=(1, 2, 3))
        shape = self._shape_route(centred(mask), patches.dtype)
        colour = self._colour_route(pixels, background, mask, patches.dtype)
        return torch.stack([shape, colour.to(shape.dtype)], dim=1), peak >= OBJECT_CONTRAST

    def _distance(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The border colour (n, C) and each pixel's distance from the background (n, 1, p, p), before scaling.
        background = border_colour(pixels)
        return background, foreground_distance(pixels, background, self.mask_background)

    def _shape_route(self, centred_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self._scaled(self.block(centred_mask.to(dtype)))

    def _colour_route(
        self, pixels: torch.Tensor, background: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        weight = mask / mask.sum(dim=(2, 3), keepdim=True).clamp_min(1e-6)  # (n, 1, p, p)
        foreground = (pixels * weight).sum(dim=(2, 3))  # (n, C)
        colours = torch.cat([background, foreground], dim=1) / PIXEL_SCALE  # about [-1, 1]
        return self._scaled(self.colour(colours.to(dtype)))

    def _scaled(self, route: torch.Tensor) -> torch.Tensor:
        # With `route_norm`, a route (n, d) at unit scale per patch: neither route can drown the other.
        return F.layer_norm(route, route.shape[-1:]) if self.route_norm else route

    def block(self, x: torch.Tensor) -> torch.Tensor:
        """The strided stem, the residual block and the projection, on the stem's input channels."""
        x = self.stem(x)  # (n, c, p/s, p/s)
        x = x + self.conv2(F.gelu(self.norm2(self.conv1(F.gelu(self.norm1(x))))))
        return self.proj(F.gelu(self.norm_out(x)).flatten(1))  # (n, d)


def image_index(batch_index: torch.Tensor, token_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per patch (n,), the index of its image among the batch's and its place among that image's patches.

    Every image's patches are contiguous in its sequence (a timestep's image ends at the separator or the next
    observation part, a caption's at its text), so a new image starts wherever the row changes or the token
    index skips.
    """
    starts = torch.ones_like(batch_index, dtype=torch.bool)
    starts[1:] = (batch_index[1:] != batch_index[:-1]) | (token_index[1:] != token_index[:-1] + 1)
    image = torch.cumsum(starts.long(), 0) - 1  # (n,)
    first = starts.nonzero(as_tuple=True)[0]  # each image's first patch
    return image, torch.arange(len(image), device=image.device) - first[image]


def random_cycle(members: torch.Tensor) -> torch.Tensor:
    """(m,) bool to (m,) indices: each member to another member, along one random cycle through them all (a lone
    member to itself), every other index to itself."""
    donor = torch.arange(len(members), device=members.device)
    chosen = members.nonzero(as_tuple=True)[0]
    order = chosen[torch.randperm(len(chosen), device=members.device)]
    donor[order] = order.roll(1)
    return donor


def image_means(embeddings: torch.Tensor, batch_index: torch.Tensor, token_index: torch.Tensor,
                route: torch.Tensor | None = None) -> torch.Tensor:
    """Per patch (n, d), the mean embedding of the patches of its image (of those of its image with the same
    `route` (n,) bool, where given): a run of consecutive patch tokens (`image_index`)."""
    image, _ = image_index(batch_index, token_index)
    group = image if route is None else 2 * image + route.long()
    n_groups = int(group.max()) + 1
    sums = embeddings.new_zeros(n_groups, embeddings.shape[1]).index_add_(0, group, embeddings)
    counts = torch.bincount(group, minlength=n_groups).to(embeddings.dtype).clamp_min(1)
    return (sums / counts[:, None])[group]


def bin_features(bins: torch.Tensor, n_frequencies: int) -> torch.Tensor:
    """Continuous bins 0..1023 (n,) as smooth features of their centre u in [-1, 1] (n, 1 + 2 n_frequencies): u,
    then the sines and cosines of pi 2^j u for j < n_frequencies (periods of 1,024 / 2^j bins)."""
    u = (bins.float() + 0.5) * (2.0 / N_BINS) - 1.0  # (n,)
    scales = math.pi * 2.0 ** torch.arange(n_frequencies, dtype=torch.float32, device=bins.device)
    angles = u[:, None] * scales  # (n, F)
    return torch.cat([u[:, None], angles.sin(), angles.cos()], dim=1)


class TokenEmbedding(nn.Module):
    """A batch to one vector per token (b, t, d): the sum of the embeddings that apply to each token."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.max_local_positions = config.max_local_positions
        self.ids = nn.Embedding(config.layout.table_size, config.d_model)
        self.patches = PatchEncoder(config)
        self.caption_patches = (PatchEncoder(replace(config, patch_input=config.caption_patch_input,
                                                     mask_background=config.caption_mask_background))
                                if config.caption_patch_input else None)
        self.patch_row = nn.Embedding(config.n_position_buckets, config.d_model)
        self.patch_col = nn.Embedding(config.n_position_buckets, config.d_model)
        self.local_position = nn.Embedding(config.max_local_positions, config.d_model)
        self.action = nn.Parameter(torch.zeros(config.d_model))  # one position shared by every action token
        self.centre_patches = config.centre_patches
        self.centre_colour_tokens = config.centre_colour_tokens
        self.colour_centre_gate = nn.Parameter(torch.ones(config.d_model)) if config.colour_centre_gate else None
        self.route_tokens = config.route_tokens
        self.continuous_offset = config.layout.continuous_offset
        self.values = nn.Linear(1 + 2 * config.value_frequencies, config.d_model) if config.value_frequencies else None

    def value_content(self, ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """`x` (b, t, d) plus, at each continuous-value id, the map of its bin's smooth features."""
        if self.values is None:  # before any index work: this runs in every forward
            return x
        bins = ids - self.continuous_offset
        where = ((bins >= 0) & (bins < N_BINS)).nonzero(as_tuple=True)
        if not len(where[0]):
            return x
        n_frequencies = (self.values.in_features - 1) // 2
        added = on_padded_rows(self.values, bin_features(bins[where], n_frequencies)).to(x.dtype)  # (n, d)
        return x.index_put(where, added, accumulate=True)

    def patch_content(self, batch: Batch) -> torch.Tensor:
        """What each patch's pixels add to its token (n, d), before its position: centred per image (per route of
        an image, with `route_tokens`, the colour route's only with `centre_colour_tokens`) if set."""
        colour_only, shape_only = self.patch_routes(batch)
        one_route = colour_only | shape_only
        if not bool(one_route.any()):
            content = self.block_content(batch.patches, batch.patch_in_episode)
        else:
            rest, routed = (~one_route).nonzero(as_tuple=True)[0], one_route.nonzero(as_tuple=True)[0]
            # every patch, in order, when none is left
            content = self.one_route_content(batch.patches[routed], colour_only[routed],
                                             batch.patch_route_swap[routed], batch.patch_colour_swap[routed])
            if len(rest):
                both = self.block_content(batch.patches[rest], batch.patch_in_episode[rest]).to(content.dtype)
                content = torch.cat([both, content])[torch.cat([rest, routed]).argsort()]
        if self.centre_patches:
            means = image_means(content, batch.patch_batch_index, batch.patch_token_index,
                                colour_only if self.route_tokens else None)
            if self.route_tokens and not self.centre_colour_tokens:
                means = means * (~colour_only)[:, None].to(means.dtype)
            elif self.colour_centre_gate is not None:
                means = torch.where(colour_only[:, None], means * self.colour_centre_gate.to(means.dtype), means)
            content = content - means
        return content

    def patch_routes(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Which patches (n,) bool read the colour route alone, which the shape route alone: those the batch flags,
        and with `route_tokens` the caption patches' tokens, each patch's first its shape, its second its colour."""
        colour_only, shape_only = batch.patch_colour_only, batch.patch_shape_only
        if not self.route_tokens:
            return colour_only, shape_only
        split = ~batch.patch_in_episode & ~(colour_only | shape_only)
        second = image_index(batch.patch_batch_index, batch.patch_token_index)[1] % 2 == 1
        return colour_only | (split & second), shape_only | (split & ~second)

    def one_route_content(self, patches: torch.Tensor, colour_only: torch.Tensor, route_swap: torch.Tensor,
                          colour_swap: torch.Tensor) -> torch.Tensor:
        """Caption patches (m, C, p, p) that keep one route (m, d): the colour route where `colour_only`, else the
        shape route, plus, where `route_swap` is set and the patch holds an object, the other route of another
        such patch of its kind that holds one (a random cycle through them: an object's colour meets another
        object's shape). Where `colour_swap` is set on a colour-only patch that holds an object (a colour token,
        with `route_tokens`), its colour route is another such patch's instead of its own."""
        captions = self.patches if self.caption_patches is None else self.caption_patches
        routes, holds_object = on_padded_rows(captions.routes, patches)  # (m, 2, d), (m,)
        kept = torch.where(colour_only[:, None], routes[:, 1], routes[:, 0])
        other = torch.where(colour_only[:, None], routes[:, 0], routes[:, 1])
        swapped = route_swap & holds_object
        donor = torch.where(colour_only, random_cycle(swapped & colour_only), random_cycle(swapped & ~colour_only))
        content = kept + torch.where(swapped[:, None], other[donor], torch.zeros_like(other))
        recoloured = colour_swap & colour_only & holds_object
        if not bool(recoloured.any()):
            return content
        return torch.where(recoloured[:, None], routes[random_cycle(recoloured), 1], content)

    def block_content(self, patches: torch.Tensor, in_episode: torch.Tensor) -> torch.Tensor:
        """Patches (n, C, p, p) through their block (n, d): an episode's (`in_episode`) through `patches`, a
        caption's through `caption_patches` where the model has it."""
        # GroupNorm: each patch is normalized on its own, so a block may run on any subset of the patches.
        if self.caption_patches is None or bool(in_episode.all()):
            return on_padded_rows(self.patches, patches)
        if not bool(in_episode.any()):
            return on_padded_rows(self.caption_patches, patches)
        episode, caption = in_episode.nonzero(as_tuple=True)[0], (~in_episode).nonzero(as_tuple=True)[0]
        content = torch.cat([on_padded_rows(self.patches, patches[episode]),
                             on_padded_rows(self.caption_patches, patches[caption])])
        return content[torch.cat([episode, caption]).argsort()]

    def forward(self, batch: Batch) -> torch.Tensor:
        local = batch.local_positions  # (b, t)
        if int(local.max()) >= self.max_local_positions:
            raise ValueError(
                f"an observation has {int(local.max()) + 1} non-patch tokens; the model has "
                f"max_local_positions={self.max_local_positions}"
            )
        x = self.value_content(batch.ids, self.ids(batch.ids))  # (b, t, d)
        x = x + self.local_position(local.clamp(min=0)) * (local >= 0).unsqueeze(-1).to(x.dtype)
        x = x + self.action * (local == ACTION_POSITION).unsqueeze(-1).to(x.dtype)
        if len(batch.patches):
            rows = position_buckets(batch.patch_rows, self.training)  # (n,)
            cols = position_buckets(batch.patch_cols, self.training)
            pixels = self.patch_content(batch) + self.patch_row(rows) + self.patch_col(cols)  # (n, d)
            x = x.index_put((batch.patch_batch_index, batch.patch_token_index), pixels.to(x.dtype))
        return x


# ------------------------------------------------------------------------------------- shapes


SHAPE_MULTIPLE = 64
"""Row counts that vary between batches are padded to a multiple of this (see the module docstring)."""
Rows = TypeVar("Rows", torch.Tensor, tuple[torch.Tensor, ...])  # what a function of rows gives: one tensor or several


def padded_size(n: int, multiple: int | None = None) -> int:
    """`n` rounded up to a multiple of `multiple` (default `SHAPE_MULTIPLE`; 1 leaves it)."""
    multiple = SHAPE_MULTIPLE if multiple is None else multiple
    return -(-n // multiple) * multiple


def on_padded_rows(function: Callable[[torch.Tensor], Rows], x: torch.Tensor) -> Rows:
    """`function` of rows `x` (n, ...), run on x padded with zero rows to `padded_size(n)`: the first n rows of
    the result (of each tensor of a tuple), for a function that treats each row on its own (a linear map, a
    per-sample convolution)."""
    n = x.shape[0]
    pad = padded_size(n) - n
    if pad == 0:
        return function(x)
    result = function(torch.cat([x, x.new_zeros(pad, *x.shape[1:])]))
    return tuple(part[:n] for part in result) if isinstance(result, tuple) else result[:n]


# ------------------------------------------------------------------------------------- rotary positions


def rotary(positions: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """The rotations of token positions (...,) as unit complex numbers (..., k/2), one per frequency.

    Computed per forward from the positions (no buffer that `module.to(dtype)` could cast to a real type); the
    same float32 arithmetic for a full forward and a cached step, so both rotate a position identically.
    """
    half = config.head_width // 2
    exponents = torch.arange(half, dtype=torch.float32, device=positions.device) / half
    angles = positions.float()[..., None] * config.rope_base ** -exponents  # (..., k/2)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate (b, h, t, k) by position: feature pairs (2i, 2i+1) as complex numbers times `rotation` (., 1, t, k/2).

    One complex multiply instead of four real ones and a concatenation: 2.7x faster forward and backward here.
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (b, h, t, k/2); bf16 has no complex type
    return torch.view_as_real(pairs * rotation).flatten(-2).to(x.dtype)


# -------------------------------------------------------------------------------------------- the block


class AttentionCache(Protocol):
    """What the attention layers need of a KV cache (agent.py has the one implementation)."""

    positions: torch.Tensor
    """(b, t) rotary positions of the new tokens."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store the new keys and values (b, h, t, k) of `layer`; attend q to everything cached; (b, h, t, k)."""
        ...


def _padded_mask(attention_mask: torch.Tensor, t: int, padded: int) -> torch.Tensor:
    """A (t, t) bool mask grown to the padded length: the padding tokens causal, read by no real token."""
    if attention_mask.shape != (t, t) or attention_mask.dtype != torch.bool:
        raise ValueError(f"attention_mask must be a ({t}, {t}) bool tensor for a batch of {t} tokens, got "
                         f"{tuple(attention_mask.shape)} {attention_mask.dtype}")
    if not attention_mask.diagonal().all():
        raise ValueError("attention_mask: every token must read itself (a row that reads nothing has no attention)")
    mask = torch.ones(padded, padded, dtype=torch.bool, device=attention_mask.device).tril()
    mask[:t, :t] = attention_mask
    return mask


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with rotary positions, through `scaled_dot_product_attention`."""

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer, self.n_head, self.dropout = layer, config.n_head, config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)
        self.out_dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, rotation: torch.Tensor, cache: AttentionCache | None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)  # (b, h, t, k)
        q, k = apply_rotary(q, rotation), apply_rotary(k, rotation)
        if cache is None:
            dropout = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=dropout)
        else:
            y = cache.attend(self.layer, q, k, v)
        return self.out_dropout(self.out(y.transpose(1, 2).reshape(b, t, d)))  # (b, t, d)


class GEGLU(nn.Module):
    """Gated feed-forward `down(up_a(x) * gelu(up_g(x)))` (Shazeer, 2020), as in Gato appendix C.1."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.d_model, 2 * config.d_ff, bias=False)  # value and gate in one matmul
        self.down = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.up(x).chunk(2, dim=-1)  # (b, t, f) each
        return self.dropout(self.down(value * F.gelu(gate)))


class Block(nn.Module):
    """Pre-norm decoder block: x + attention(norm(x)), then x + feed-forward(norm(x))."""

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model)
        self.attention = CausalSelfAttention(config, layer)
        self.norm2 = nn.LayerNorm(config.d_model)
        self.feed_forward = GEGLU(config)

    def forward(
        self, x: torch.Tensor, rotation: torch.Tensor, cache: AttentionCache | None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), rotation, cache, mask)
        return x + self.feed_forward(self.norm2(x))


# -------------------------------------------------------------------------------------------- the model


@dataclass
class LossOutput:
    """The training loss and its parts, for logging; a part with no targets in the batch is NaN."""

    loss: torch.Tensor  # () mean cross-entropy over every text and action target
    text_loss: torch.Tensor  # () mean over text targets
    action_loss: torch.Tensor  # () mean over action targets
    n_text: int  # text targets in the batch
    n_action: int  # action targets in the batch
    row_loss: torch.Tensor  # (b,) summed cross-entropy of each row's targets, detached: the loss per task
    row_targets: torch.Tensor  # (b,) targets in each row


def gaussian_bin_kernel(sigma: float, n_bins: int = N_BINS) -> torch.Tensor:
    """Mass of a Gaussian of std `sigma` bins, centred on a bin's centre, in that bin and its neighbours (2w + 1,).

    Offsets run -w..w with w = ceil(4 sigma) (at most n_bins - 1); the mass past 4 sigma (under 1e-4) is dropped.
    """
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"action_sigma must be a finite number of bins above 0, got {sigma}")
    w = min(math.ceil(4 * sigma), n_bins - 1)
    edges = torch.arange(-w, w + 2, dtype=torch.float64) - 0.5  # (2w + 2,) bin edges around the centre 0
    cdf = 0.5 * (1 + torch.erf(edges / (sigma * math.sqrt(2))))
    return (cdf[1:] - cdf[:-1]).float()


def smoothed_bin_loss(
    logits: torch.Tensor, target_ids: torch.Tensor, first_bin_id: int, sigma: float, n_bins: int = N_BINS
) -> torch.Tensor:
    """Cross-entropy (m,) of logits (m, v) against a Gaussian over the bins around each target bin (HL-Gauss).

    The Gaussian is cut at the ends of the bin range and renormalized (its mass past the ends would otherwise
    fall on ids of other kinds).
    """
    kernel = gaussian_bin_kernel(sigma, n_bins).to(logits.device)  # (2w + 1,)
    w = (len(kernel) - 1) // 2
    bins = target_ids[:, None] - first_bin_id + torch.arange(-w, w + 1, device=logits.device)  # (m, 2w + 1)
    inside = (bins >= 0) & (bins < n_bins)
    mass = kernel * inside  # (m, 2w + 1)
    mass = mass / mass.sum(dim=1, keepdim=True)
    picked = logits.gather(1, bins.clamp(0, n_bins - 1) + first_bin_id)  # (m, 2w + 1)
    return torch.logsumexp(logits, dim=1) - (mass * picked).sum(dim=1)


class Generalist(nn.Module):
    """The decoder: embeddings, `n_layer` blocks, a final norm and the output head over the id table."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = TokenEmbedding(config)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layer))
        self.norm = nn.LayerNorm(config.d_model)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.d_model, config.layout.table_size,
                                                                    bias=False)
        self.apply(self._init_weights)
        # GPT-2's scaling: each residual branch's output starts small, so the stream's variance stays ~1.
        for name, parameter in self.named_parameters():
            if name.endswith(("attention.out.weight", "feed_forward.down.weight")):
                nn.init.normal_(parameter, std=0.02 / math.sqrt(2 * config.n_layer))
        nn.init.normal_(self.embed.action, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameters, optionally without the id table (whose lookups cost no FLOPs)."""
        total = sum(p.numel() for p in self.parameters())
        return total - self.embed.ids.weight.numel() if exclude_embeddings else total

    def hidden(
        self, batch: Batch, cache: AttentionCache | None = None, attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-normed hidden states (b, t, d); with a cache, the batch holds only the tokens after it.

        `attention_mask` (t, t) bool, True where token i may read token j, replaces the causal mask in every layer:
        for probes of what a reading needs (`bench.word_probe`), not for training; no cache with it.
        """
        t = batch.ids.shape[1]
        x = self.embed_dropout(self.embed(batch))  # (b, t, d)
        mask = None
        if cache is None:
            if t > self.config.context:
                raise ValueError(f"a batch of {t} tokens is longer than the context of {self.config.context}")
            # Zero tokens after the last: under causal attention no real token reads them (SHAPE_MULTIPLE).
            x = F.pad(x, (0, 0, 0, padded_size(t) - t))
            positions = torch.arange(x.shape[1], device=batch.ids.device)  # (t',)
            if attention_mask is not None:
                mask = _padded_mask(attention_mask, t, x.shape[1])
        else:
            if attention_mask is not None:
                raise ValueError("attention_mask replaces the causal mask of a whole batch: not with a cache")
            positions = cache.positions  # (b, t)
        rotation = rotary(positions, self.config).unsqueeze(-3)  # (1 or b, 1, t', k/2): broadcast over heads
        for block in self.blocks:
            x = block(x, rotation, cache, mask)
        return self.norm(x[:, :t])

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., d) to logits over the whole id table (..., v)."""
        weight = self.embed.ids.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight)

    def logits(
        self, batch: Batch, cache: AttentionCache | None = None, attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits at every position (b, t, v); for evaluation and tests, not for training."""
        return self.output_logits(self.hidden(batch, cache, attention_mask))

    def forward(
        self,
        batch: Batch,
        targets: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        action_sigma: float = 0.0,
    ) -> LossOutput:
        """Masked next-token cross-entropy: the token at t predicts t + 1, weighted by `loss_mask[t + 1]`.

        `targets` (b, t) are the ids to predict (default `batch.targets`; differing from the ids read after
        `shuffle_action_inputs`);
        `weights` (b, t) weigh each target in `loss` (a weighted mean), e.g. more on decisive actions;
        `action_sigma` > 0 trains continuous action targets against a Gaussian of that many bins around the
        exact bin (`smoothed_bin_loss`). The text, action and per-row losses stay the unweighted exact-target
        cross-entropy, so they compare across runs.
        """
        hidden = self.hidden(batch)  # (b, t, d)
        rows, columns = batch.loss_mask[:, 1:].nonzero(as_tuple=True)  # (m,) each: positions that predict a target
        logits = on_padded_rows(self.output_logits, hidden[rows, columns])  # (m, v): only where a loss is taken
        targets = (batch.targets if targets is None else targets)[rows, columns + 1]  # (m,)
        losses = F.cross_entropy(logits.float(), targets, reduction="none")  # (m,)
        kinds = batch.kinds[rows, columns + 1]
        is_text, is_action = kinds == TokenKind.TEXT, kinds == TokenKind.ACTION
        trained = losses
        if action_sigma > 0:
            first_bin = self.config.layout.continuous_offset
            smooth = is_action & (targets >= first_bin) & (targets < first_bin + N_BINS)  # continuous actions
            if smooth.any():
                trained = losses.clone()
                trained[smooth] = smoothed_bin_loss(logits[smooth].float(), targets[smooth], first_bin, action_sigma)
        loss = trained.sum() / max(len(trained), 1)
        if weights is not None:
            weight = weights[rows, columns + 1].to(trained.dtype)  # (m,)
            loss = (trained * weight).sum() / weight.sum().clamp(min=1e-12)
        n_text, n_action = int(is_text.sum()), int(is_action.sum())
        n_rows = batch.ids.shape[0]
        return LossOutput(
            loss=loss,
            text_loss=(losses * is_text).sum() / n_text if n_text else losses.new_tensor(math.nan),
            action_loss=(losses * is_action).sum() / n_action if n_action else losses.new_tensor(math.nan),
            n_text=n_text,
            n_action=n_action,
            row_loss=losses.detach().new_zeros(n_rows).index_add_(0, rows, losses.detach()),
            row_targets=torch.bincount(rows, minlength=n_rows),
        )

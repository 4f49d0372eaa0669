"""Every modality to one token stream: text, values, image patches, and timesteps built from them.

Pure functions over numpy arrays; nothing here knows the model or the environments.
"""

from generalist.tokenizers.images import (
    FRAME_COLOURS,
    N_POSITION_BUCKETS,
    PATCH_SIZE,
    PIXEL_DIVISOR,
    frame_channels,
    images_to_patches,
    patch_intervals,
    patch_position_buckets,
    sample_position_buckets,
    stack_frames,
)
from generalist.tokenizers.layout import TokenLayout
from generalist.tokenizers.stream import (
    ACTION_POSITION,
    NO_POSITION,
    NO_TIMESTEP,
    OBSERVATION_KEYS,
    ActionSpec,
    TokenizedSequence,
    TokenKind,
    decode_actions,
    tokenize_actions,
    tokenize_caption,
    tokenize_episode,
    tokenize_text,
    tokenize_timestep,
)
from generalist.tokenizers.text import TextTokenizer, TextTokenizerConfig, train_text_tokenizer
from generalist.tokenizers.values import (
    N_BINS,
    bins_to_continuous,
    check_discrete,
    continuous_to_bins,
    inverse_mu_law,
    mu_law,
)

__all__ = [
    "ACTION_POSITION",
    "FRAME_COLOURS",
    "NO_POSITION",
    "NO_TIMESTEP",
    "N_BINS",
    "N_POSITION_BUCKETS",
    "OBSERVATION_KEYS",
    "PATCH_SIZE",
    "PIXEL_DIVISOR",
    "ActionSpec",
    "TextTokenizer",
    "TextTokenizerConfig",
    "TokenKind",
    "TokenLayout",
    "TokenizedSequence",
    "bins_to_continuous",
    "check_discrete",
    "continuous_to_bins",
    "decode_actions",
    "frame_channels",
    "images_to_patches",
    "inverse_mu_law",
    "mu_law",
    "patch_intervals",
    "patch_position_buckets",
    "sample_position_buckets",
    "stack_frames",
    "tokenize_actions",
    "tokenize_caption",
    "tokenize_episode",
    "tokenize_text",
    "tokenize_timestep",
    "train_text_tokenizer",
]

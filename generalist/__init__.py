"""generalist: a Gato-style generalist agent.

One decoder transformer and one set of weights for every task, because every modality (text, image
patches, continuous and discrete values, actions) becomes one stream of tokens. The card's parts
(tokenizers, envs, datasets) are subpackages of `generalist` so that they never shadow Hugging Face's
top-level `tokenizers` and `datasets` packages in a user's environment.
"""

__version__ = "0.1.0"

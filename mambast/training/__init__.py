"""Training Mamba-ST as the reference does: its VGG losses, its initialisation, its checkpoint files.

Pure PyTorch, beside the inference library: the losses run the model's own stages (one
:class:`~mambast.network.model.MambaST`, no second copy of the network).
"""

from .losses import LossWeights, compute_losses, loss_permutations, official_gradients
from .vgg import VGGEncoder, VGGWeightsNotFound, load_vgg
from .weights import (extra_tensors_of, initialise_like_reference, reference_initial_tensors, save_official,
                      save_safetensors)

__all__ = ["LossWeights", "VGGEncoder", "VGGWeightsNotFound", "compute_losses", "extra_tensors_of",
           "initialise_like_reference", "load_vgg", "loss_permutations", "official_gradients",
           "reference_initial_tensors", "save_official", "save_safetensors"]

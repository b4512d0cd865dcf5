"""capsule_lib: the capsule networks of the book 'Capsule Networks, from Neurons to Critiques'."""
__version__ = "0.2.0"

from .checks import check_images
from .interfaces import Model, ModelOutput
from .losses import margin_loss, reconstruction_loss
from .routing import RoutingResult, dynamic_routing, self_attention_routing
from .squash import efficient_squash, squash
from .diagnostics import (capsule_activation_stats, collect_capsule_lengths, coupling_entropy,
                          dead_capsule_fraction, gradient_norms, mean_coupling_entropy)
from .layers import CapsuleClassifier, CapsuleDecoder
from .capsnet import CapsNet, DigitCapsules, LearnedCouplingCapsules, PrimaryCapsules
from .efficient_capsnet import EfficientCapsNet
from .baseline_cnn import BaselineCNN, PoolingCNN
from .deep_capsnet import DeepCapsNet
from .registry import MODEL_NAMES, build_model
from .recipes import RECIPES, PairRecipe, Recipe
from .data import (DATASET_NAMES, DatasetNotFoundError, affine_test_set, affine_transform,
                   load_dataset, make_multimnist, make_overlapping_pairs, pad_to, random_affine,
                   random_shift, shift_images, subset)

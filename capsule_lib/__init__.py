"""capsule_lib: the capsule networks of the book 'Capsule Networks, from Neurons to Critiques'."""
__version__ = "0.1.0"

from .interfaces import ModelOutput, check_images
from .losses import margin_loss, reconstruction_loss
from .routing import RoutingResult, dynamic_routing, self_attention_routing
from .squash import efficient_squash, squash

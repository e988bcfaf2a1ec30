"""Linen modules of SPADE, pure functions of (variables, inputs); they know nothing of files, data or meshes.

Variable collections: 'params' (trainable), 'batch_stats' (SPADE running mean/var), 'spectral' (spectral-norm u, v).
"""
from spade_jax.models.discriminator import MultiscaleDiscriminator, NLayerDiscriminator
from spade_jax.models.encoder import ConvEncoder, reparameterize
from spade_jax.models.factory import build_discriminator, build_encoder, build_generator, count_params
from spade_jax.models.generator import SPADEGenerator, latent_size, output_size
from spade_jax.models.spade import SPADE, SPADEResnetBlock
from spade_jax.models.vgg import VGG19

__all__ = [
    "SPADE", "SPADEResnetBlock", "SPADEGenerator", "MultiscaleDiscriminator", "NLayerDiscriminator", "ConvEncoder",
    "VGG19", "reparameterize", "latent_size", "output_size", "build_generator", "build_discriminator",
    "build_encoder", "count_params",
]

"""Generative models of H&E patches behind one trainer contract (task.py): the KL autoencoder
(autoencoder.py), the GAN (gan.py) and pixel or latent diffusion (unet.py, diffusion.py), built
by `build_task` from the model section of the config (config.py, which lists tiny settings)."""
from histogen.models.autoencoder import Autoencoder
from histogen.models.config import TINY, AutoencoderConfig, DiffusionConfig, GANConfig, from_dict
from histogen.models.ssim import ssim
from histogen.models.task import NonFiniteLoss, Task, build_task

__all__ = ["TINY", "Autoencoder", "AutoencoderConfig", "DiffusionConfig", "GANConfig", "NonFiniteLoss", "Task",
           "build_task", "from_dict", "ssim"]

"""Generative models of H&E patches behind one trainer contract (task.py): the KL autoencoder
(autoencoder.py), the GAN (gan.py) and pixel or latent diffusion (diffusion.py, unet.py). Each
kind's module holds its config dataclass and Task; registry.py lists the kinds."""

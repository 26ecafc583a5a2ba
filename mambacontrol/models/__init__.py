"""Model components: autoencoder, denoising UNet, Mamba ControlNet and noise schedules.

Import from the submodules (``mambacontrol.models.autoencoder`` ...); this package file stays light.
"""

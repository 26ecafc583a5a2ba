"""Training: strict configs, resumable batch order, safetensors checkpoints and the engine.

The stages (autoencoder, latents, graph, unet, controlnet) are built on
:class:`~mambacontrol.training.engine.Trainer`; see each module's docstring and the "Training
engine" section of docs/architecture.md. Import from the submodules (``training.config``,
``training.data_order``, ``training.checkpoint``, ``training.engine``); this package imports
nothing heavy itself.
"""

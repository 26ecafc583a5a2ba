"""The samplers a model can predict with, by name (light: the CLI's choices, without diffusers).

``ddim``: DDIM; ``dpm-solver``: DPM-Solver++ (2nd order, multistep); ``ddpm``: ancestral DDPM.
:data:`mambacontrol.models.schedulers.SAMPLERS` maps each name to its diffusers scheduler.
"""

SAMPLER_NAMES = ("ddim", "dpm-solver", "ddpm")

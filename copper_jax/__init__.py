"""copper_jax: weak-label segmentation and hypothesis sweeps for SEM images of roughened copper."""

__version__ = "0.1.0"

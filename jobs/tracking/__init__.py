"""Experiment tracking: each finished job's settings, metrics per step, evaluation and adapter logged to the
owner's MLflow (or the site's), from the background queue, never in the training's way."""

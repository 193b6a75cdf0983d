"""The standalone host: diffusers/transformers models, single-file checkpoints, tiny demo models, the app."""

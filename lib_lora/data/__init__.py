"""Training data: the dataset folder, aspect-ratio buckets, caption processing, image transforms and
the latent cache (numpy + PIL + torch; no webui, no gradio).

Modules: ``buckets`` (bucket lists and choices, as sd-scripts), ``dataset`` (scan, bucket plan,
epoch batches), ``captions`` (per-step caption processing), ``images`` (load, resize, crop, tensor),
``latent_cache`` (VAE latents in memory or in sd-scripts' npz files). Nothing heavy is imported here.
"""

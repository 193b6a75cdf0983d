"""Test helpers shared across test folders (tiny models, generated images, fake servers)."""

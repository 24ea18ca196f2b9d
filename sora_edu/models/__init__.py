"""Models of the course: ViT, ViViT, NaViT (and, as they land, the VAE, DiT, text encoder)."""

"""One tiling module: a window grid, pluggable blend weights and a blending canvas, used by latent
aggregation sampling (`aggregation`), the tiled VAE (`vae`) and pixel-space models (Real-ESRGAN)."""

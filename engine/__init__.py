"""histogen's data engine: whole-slide images in, Zarr patch stores (and embeddings) out."""
__version__ = "0.1.0"

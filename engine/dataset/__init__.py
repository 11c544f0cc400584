"""The Path Foundation study's dataset format, both ways: a patch store's embeddings out to parquet
files that `datasets` and the Hugging Face Hub read, and such a table into a patch store, the pixels
re-read from the slides at the table's coordinates.

    python -m engine.dataset export --store S.zarr --out DIR [--organ O] [--with-images] [--push REPO_ID]
    python -m engine.dataset import --table T.parquet|DIR --slides DIR --out S.zarr [--scheduler ADDRESS]

One row per patch: organ, slide_name, x and y (level-0 top-left corner), level, patch_size ([w, h]
pixels read at that level), resize ([w, h] input of the model), image_embedding_vector ((1, D)
float32, nested as in the study); optionally image (the model input as PNG), otherwise no pixels.

Modules: schema (the columns), export and hub (out), table and table_import (in), cli.
"""

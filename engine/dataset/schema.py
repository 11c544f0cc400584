"""The study's table: its columns as Hugging Face features, and the arrow schema and dataset-card
types derived from them."""
from __future__ import annotations

import json

import pyarrow as pa

from engine.encoder_registry import DEFAULT, ENCODERS
from engine.errors import UserError
REQUIRED = ("slide_name", "x", "y", "level", "patch_size")
EMBEDDING_COLUMNS = ("image_embedding_vector", "embedding_vector")  # the study's name, then some re-uploads'


class DatasetError(UserError, ValueError):
    """A table or an export that cannot be used or made as asked; the message says what to do."""


def model_id(encoder: str = DEFAULT) -> str:
    """The encoder's model id, where stored embeddings do not record one (older stores are the study's
    encoder's), as the registry states it now."""
    e = ENCODERS.get(encoder)
    return (e.repo or e.name) if e else encoder


def input_size(encoder: str = DEFAULT) -> int:
    """The encoder's input side, where neither the embeddings nor a table say (tables without an
    encoder column are the study's), as the registry states it now."""
    return ENCODERS[encoder if encoder in ENCODERS else DEFAULT].input_size


def _value(dtype: str) -> dict:
    return {"dtype": dtype, "_type": "Value"}


def _list(feature: dict) -> dict:
    return {"feature": feature, "_type": "List"}


FEATURES = {
    "organ": _value("string"),
    "slide_name": _value("string"),
    "x": _value("int64"),
    "y": _value("int64"),
    "level": _value("int64"),
    "patch_size": _list(_value("int64")),
    "resize": _list(_value("int64")),
    "image_embedding_vector": _list(_list(_value("float32"))),
    "encoder": _value("string"),  # engine.encoder_registry's name; tables without it are Path Foundation's
}
IMAGE = {"_type": "Image"}  # {"bytes": PNG, "path": None}; datasets decodes it to a PIL image
_ARROW = {"string": pa.string(), "int64": pa.int64(), "float32": pa.float32()}


def _arrow_type(f: dict) -> pa.DataType:
    if f["_type"] == "Value":
        return _ARROW[f["dtype"]]
    if f["_type"] == "List":
        return pa.list_(_arrow_type(f["feature"]))
    return pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def card_type(f: dict) -> dict:
    """A feature as a dataset card's `dataset_info.features` writes it (as datasets does)."""
    if f["_type"] == "Value":
        return {"dtype": f["dtype"]}
    if f["_type"] == "List":
        inner = card_type(f["feature"])
        return {"list": inner.get("dtype", inner)}
    return {"dtype": "image"}


def features(with_images: bool) -> dict:
    return {**FEATURES, **({"image": IMAGE} if with_images else {})}


def schema(with_images: bool) -> pa.Schema:
    """The arrow schema, carrying the features where datasets looks for them (so that `image`
    decodes to a PIL image)."""
    feats = features(with_images)
    meta = {"huggingface": json.dumps({"info": {"features": feats}})}
    return pa.schema([(name, _arrow_type(f)) for name, f in feats.items()], metadata=meta)

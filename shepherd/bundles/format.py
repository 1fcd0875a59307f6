"""The bundle's wire types: manifest, signature file and model metadata (card, lineage, signature)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

FORMAT = "shepherd-bundle/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MODEL = "model.onnx"
METADATA = "metadata.json"
REFERENCE = "reference.parquet"
REQUIRED = (MODEL, METADATA)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z"
ModelName = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}\Z")]
Text = Annotated[str, msgspec.Meta(max_length=20_000)]
Short = Annotated[str, msgspec.Meta(max_length=512)]

# V2 (Open Inference Protocol) datatypes.
Datatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BF16", "BYTES"]


class Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of bundle types: unknown fields are an error, so a typo never passes silently."""


class ManifestFile(Strict, kw_only=True):
    path: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    """Relative path of the file inside the archive."""
    sha256: Sha256
    """Hex sha256 of the file's bytes."""
    size: Annotated[int, msgspec.Meta(ge=0)]
    """Size in bytes."""


class Manifest(Strict, kw_only=True):
    format: Literal["shepherd-bundle/1"] = FORMAT
    """Format identifier and version."""
    model: ModelName
    """Registered model name this bundle adds a version to."""
    created_at: Short
    """ISO 8601 creation time."""
    files: list[ManifestFile]
    """Every file of the bundle except manifest.json and manifest.sig."""


class SignatureFile(Strict, kw_only=True):
    algorithm: Literal["ed25519"] = "ed25519"
    key_id: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{16}\Z")]
    """First 16 hex digits of sha256 of the raw 32-byte public key."""
    signature: Short
    """Base64 Ed25519 signature over the 32-byte sha256 digest of manifest.json."""


class TensorSpec(Strict, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    datatype: Datatype
    shape: list[Annotated[int, msgspec.Meta(ge=-1)]]
    """Dimensions; -1 is any size."""


class IOSignature(Strict, kw_only=True):
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class Owner(Strict, kw_only=True):
    name: Short
    contact: Short = ""


class ModelCard(Strict, kw_only=True):
    """Model Card Toolkit style fields."""

    overview: Text = ""
    intended_use: Text = ""
    limitations: Text = ""
    training_data: Text = ""
    evaluation_metrics: dict[Short, float] = {}
    owners: list[Owner] = []


class Lineage(Strict, kw_only=True):
    dataset_digest: Short = ""
    """Digest of the training data set (e.g. sha256:...)."""
    code_revision: Short = ""
    """Revision of the training code (e.g. a git commit)."""
    parent_version: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """Version of the same model this one was derived from."""


class Metadata(Strict, kw_only=True):
    """metadata.json in a bundle; also the metadata file (TOML or JSON) given to `bundle create`."""

    name: ModelName
    """Registered model name."""
    description: Text = ""
    card: ModelCard = msgspec.field(default_factory=ModelCard)
    lineage: Lineage = msgspec.field(default_factory=Lineage)
    metrics: dict[Short, float] = {}
    """Headline metrics of this version (e.g. accuracy on a held-out set)."""
    signature: IOSignature | None = None
    """Input/output signature; read from the ONNX graph when absent, checked against it when present."""

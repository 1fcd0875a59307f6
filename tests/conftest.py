"""Shared fixtures: a tiny ONNX model, signing keys, bundles, a config under tmp_path, API clients."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import structlog
from litestar.testing import TestClient
from onnx import TensorProto, helper

from shepherd import config as config_mod
from shepherd.app import create_app
from shepherd.appliance import Appliance
from shepherd.auth import create_token
from shepherd.bundles import signing
from shepherd.bundles.create import create

METADATA = '''name = "{name}"
description = "A tiny test model."
[metrics]
accuracy = 0.9
[lineage]
dataset_digest = "sha256:{digest}"
code_revision = "abc123"
[card]
overview = "Adds a bias to three features."
intended_use = "Tests."
limitations = "None worth stating."
training_data = "Synthetic."
evaluation_metrics = {{ auc = 0.95 }}
owners = [{{ name = "QA", contact = "qa@example.invalid" }}]
'''


def write_model(path: Path, bias: float = 1.0) -> Path:
    """A self-contained ONNX model: y = x + bias, x FP32 [-1, 3]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])
    b = helper.make_tensor("b", TensorProto.FLOAT, [3], np.full(3, bias, dtype=np.float32).tolist())
    graph = helper.make_graph([helper.make_node("Add", ["x", "b"], ["y"])], "tiny", [x], [y], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


class Keys:
    def __init__(self, root: Path) -> None:
        self.trusted_dir = root / "trusted"
        self.private, pub = signing.generate(root / "signer", "release")
        self.trusted_dir.mkdir(parents=True)
        (self.trusted_dir / "release.pub").write_bytes(pub.read_bytes())
        self.rogue, _ = signing.generate(root / "rogue", "rogue")


@pytest.fixture(autouse=True)
def _default_logging() -> Iterator[None]:
    """Each test starts with structlog's defaults: the CLI reconfigures logging for the whole process."""
    structlog.reset_defaults()
    yield


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "keys")


@pytest.fixture
def make_bundle(tmp_path: Path, keys: Keys) -> Callable[..., Path]:
    """Factory: a signed bundle of the tiny model; `bias` changes the model, so the content."""
    counter = iter(range(10_000))

    def make(name: str = "tiny", bias: float = 1.0, *, sign: bool = True, reference: bool = False) -> Path:
        n = next(counter)
        work = tmp_path / f"bundle-src-{n}"
        work.mkdir()
        model = write_model(work / "model.onnx", bias)
        meta = work / "meta.toml"
        meta.write_text(METADATA.format(name=name, digest=hashlib.sha256(str(bias).encode()).hexdigest()))
        ref = None
        if reference:
            import duckdb

            ref = work / "reference.parquet"
            with duckdb.connect() as con:
                con.execute(f"COPY (SELECT random() AS a, random() AS b, random() AS c FROM range(100)) TO '{ref}' (FORMAT parquet)")
        out = tmp_path / f"{name}-{n}.shb"
        create(model=model, metadata=meta, out=out, reference=ref, sign_key=keys.private if sign else None)
        return out

    return make


@pytest.fixture
def config(tmp_path: Path, keys: Keys) -> config_mod.Config:
    return config_mod.parse(
        {"storage": {"data_dir": str(tmp_path / "data")}, "bundles": {"trusted_keys_dir": str(keys.trusted_dir)}, "auth": {"token_cache_seconds": 0}}
    )


@pytest.fixture
def appliance(config: config_mod.Config) -> Iterator[Appliance]:
    appl = Appliance(config)
    appl.start()
    yield appl
    appl.close()


@pytest.fixture
def tokens(appliance: Appliance) -> dict[str, str]:
    """One token per role."""
    return {role: create_token(appliance.db, role=role, name=f"test-{role}", actor="test")[0] for role in ("viewer", "operator", "admin")}


@pytest.fixture
def api(config: config_mod.Config, appliance: Appliance) -> Iterator[TestClient]:
    """An in-process client of the real app over the real stores (no token set)."""
    with TestClient(create_app(config, appliance=appliance)) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def at_once(work: Callable[[int, int], object], workers: int, rounds: int = 1) -> list[Exception]:
    """Call work(worker, round) from `workers` threads, each round begun by all of them together (a
    barrier), for races between writers; returns the exceptions the calls raised."""
    import threading

    barrier = threading.Barrier(workers)
    errors: list[Exception] = []

    def run(worker: int) -> None:
        for i in range(rounds):
            barrier.wait()
            try:
                work(worker, i)
            except Exception as err:  # noqa: BLE001 - returned to the test, which asserts on them
                errors.append(err)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def snapshot(data_dir: Path) -> dict[str, object]:
    """Registry tables and blob files, for byte-for-byte comparisons before and after a failed change."""
    import apsw

    conn = apsw.Connection(str(data_dir / "shepherd.sqlite"), flags=apsw.SQLITE_OPEN_READONLY)
    tables = {}
    for t in ("models", "versions", "version_files", "version_tags", "aliases", "alias_history", "audit", "tokens"):
        tables[t] = list(conn.execute(f"SELECT * FROM {t} ORDER BY rowid"))
    conn.close()
    blobs = {}
    root = data_dir / "blobs"
    for p in sorted(root.rglob("*")):
        if p.is_file() and ".tmp" not in p.parts:
            blobs[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    tmp_left = sorted(str(p) for p in (data_dir / "tmp").rglob("*")) if (data_dir / "tmp").exists() else []
    return {"tables": tables, "blobs": blobs, "tmp": tmp_left}


os.environ.setdefault("SHEPHERD_TEST", "1")

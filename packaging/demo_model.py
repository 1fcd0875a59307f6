"""Build the demo bundle: an iris classifier (scikit-learn's bundled dataset) as a signed Shepherd bundle.

Build-time only (needs the `dev` extra: scikit-learn, skl2onnx); the appliance itself does not.
Writes into OUT (default .demo/): keys/demo.key, keys/demo.pub, iris.onnx, iris.toml,
reference.parquet and iris.shb. Re-running reuses the key, so the bundle stays importable.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import duckdb
import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from shepherd.bundles import signing
from shepherd.bundles.create import create

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def build(out: Path, seed: int = 0) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    keys = out / "keys"
    if not (keys / "demo.key").exists():
        signing.generate(keys, "demo")
    data = load_iris()
    x = data.data.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, data.target, test_size=0.3, random_state=seed, stratify=data.target)
    clf = LogisticRegression(max_iter=500, random_state=seed).fit(x_train, y_train)
    accuracy = float(clf.score(x_test, y_test))
    onx = to_onnx(clf, x_train[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    model = out / "iris.onnx"
    model.write_bytes(onx.SerializeToString())

    reference = out / "reference.parquet"
    with duckdb.connect() as con:
        # the reference holds the model's input features, one column per position of X, in order
        con.register("ref", {name: x_train[:, i] for i, name in enumerate(FEATURES)})
        con.execute(f"COPY ref TO '{reference}' (FORMAT parquet)")

    digest = hashlib.sha256(x_train.tobytes()).hexdigest()
    meta = out / "iris.toml"
    meta.write_text(
        f'''name = "iris"
description = "Logistic regression on the iris flowers (demo model shipped with Shepherd)."
[metrics]
accuracy = {accuracy:.6f}
[lineage]
dataset_digest = "sha256:{digest}"
code_revision = "packaging/demo_model.py"
[card]
overview = "Classifies an iris flower into setosa, versicolor or virginica from four measurements in cm."
intended_use = "Demonstrating Shepherd end to end. Not for botanical decisions."
limitations = "Trained on 105 flowers from one 1936 data set; inputs outside its ranges are extrapolated."
training_data = "scikit-learn's bundled iris data set (Fisher, 1936), 70% stratified split, seed {seed}."
evaluation_metrics = {{ test_accuracy = {accuracy:.6f} }}
owners = [{{ name = "Shepherd demo", contact = "ops@example.invalid" }}]
'''
    )
    bundle = out / "iris.shb"
    create(model=model, metadata=meta, reference=reference, sign_key=keys / "demo.key", out=bundle)
    return bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(".demo"))
    args = parser.parse_args()
    print(build(args.out))


if __name__ == "__main__":
    main()

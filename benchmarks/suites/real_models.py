"""Real models: a MobileNetV2 that learns on an image folder, and stock applications end to end.

    python -m edgeship.benchmarks.suites.real_models [--runs-dir DIR] [--seed 0] [--parts digits,zoo]
        [--image-size 96] [--digits-rows N] [--epochs N] [--zoo NAMES] [--zoo-size 64] [--zoo-rows N]
        [--tune-epochs N] [--zoo-epochs 30] [--zoo-tune-epochs 6]
    python -m edgeship.benchmarks.suites.real_models --smoke   # small images, one epoch, the LSTM only

(a) digits: the 1,797 scikit-learn digits rendered as PNGs (``--image-size``, default 96x96) in
one folder per class, trained the way a user would (``edgeship train --model mobilenetv2
--alpha 0.35``), printed beside the small CNN on the same folder and split and the run's
baselines; then ``--prune 0.5 --quantize int8``: the sparsity reached, the int8 accuracy drop
and the int8 TFLite size as a ratio of the float32 one. (b) zoo: stock tf_keras applications
from random weights at 64x64, one LSTM and one GRU model, each trained on the digits until
validation accuracy stops improving (at most ``--zoo-epochs``: a network that has not learned
gives outputs whose int8 top-1 flips on rounding alone), saved to a file and taken through
import (``compress --model``'s allowlist), compress (prune 0.5 + int8), and export to TFLite and
ONNX with validation: how many go through, and the one-line reason of each that does not (a
refused int8 TFLite names the layer int8 loses most). Then the issue's targets, each met or not.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.benchmarks.suites.smoke import parse_args
from edgeship.core.errors import EdgeshipError
from edgeship.core.runstore import RunStore
from edgeship.training.keras_env import keras, load_model

RECURRENT = ("LSTM", "GRU")
ZOO = ("MobileNetV2", "MobileNetV3Small", "MobileNetV3Large", "EfficientNetB0", "EfficientNetV2B0",
       "ResNet50", "DenseNet121", "ConvNeXtTiny", "RegNetX002", *RECURRENT)
ZOO_OPTIONS = {"MobileNetV2": {"alpha": 0.35}}
SMOKE = {"image_size": 32, "digits_rows": 300, "epochs": 1, "tune_epochs": 1, "zoo": "LSTM", "zoo_rows": 200,
         "zoo_epochs": 1, "zoo_tune_epochs": 1}
TARGET_ACCURACY = 0.90
TARGET_SPARSITY_PT = 2.0
TARGET_INT8_DROP_PT = 1.5
# a converter's "in layer 'x'", or int8's "loses it most at layer 'x'" (export.quant_debug)
NAMES_A_LAYER = re.compile(r"in layers? '|loses it most at layer '")
PRETRAIN_PATIENCE = 6  # (b) epochs without a better validation accuracy before pretraining stops


def render_digits(root: Path, size: int, mode: str = "L", rows: int | None = None) -> Path:
    """The scikit-learn digits (8x8, 0-16) as ``size`` x ``size`` PNGs, ``root/<digit>/<i>.png``."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images, digits.target
    if rows is not None and rows < len(labels):
        keep = np.random.default_rng(0).permutation(len(labels))[:rows]
        images, labels = images[np.sort(keep)], labels[np.sort(keep)]
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = Image.fromarray(np.round(img * (255 / 16)).astype(np.uint8), "L")
        pixels.resize((size, size), Image.BILINEAR).convert(mode).save(folder / f"{i}.png")
    return root


# ----------------------------------------------------------------------------- (a) digits

def bench_digits(store: Any, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """MobileNetV2 and the small CNN on the rendered digits, then prune 0.5 + int8 of the former."""
    from edgeship.compression.measure import tflite_bytes
    from edgeship.compression.stage import CompressConfig, compress_run
    from edgeship.training.stage import TrainConfig, train

    size = args.image_size
    folder = render_digits(work / f"digits{size}", size, rows=args.digits_rows)
    n = sum(1 for _ in folder.rglob("*.png"))
    print(f"digits rendered as {size}x{size} PNGs: {n} images in {folder}", flush=True)
    out: dict[str, Any] = {"images": n, "size": size, "models": {}}
    for model in ("mobilenetv2", "cnn"):
        t0 = time.perf_counter()
        cfg = TrainConfig(dataset=str(folder), image_size=(size, size), model=model, alpha=0.35,
                          seed=args.seed, **({"epochs": args.epochs} if args.epochs else {}))
        trained = train(store, cfg)
        m = trained.metrics
        out["models"][model] = {"run": trained.run, "accuracy": m["test"]["accuracy"],
                                "params": m["params"], "epochs": m.get("epochs_run"),
                                "seconds": time.perf_counter() - t0}
        out["baselines"] = {k: v["accuracy"] for k, v in m["baselines"].items()}
        print(f"  trained {model}: test accuracy {m['test']['accuracy']:.4f} "
              f"({m.get('epochs_run')} epochs, {time.perf_counter() - t0:.0f} s)", flush=True)
    run = out["models"]["mobilenetv2"]["run"]
    t0 = time.perf_counter()
    variant = compress_run(run, CompressConfig(prune=0.5, quantize="int8", seed=args.seed,
                                               **({"epochs": args.tune_epochs} if args.tune_epochs else {})))
    vm = variant.metrics
    base_f32 = len(tflite_bytes(load_model(run.model_path("base")), "float32"))
    out["compressed"] = {
        # sparsity over the kernels pruning acts on (tfmot never prunes depthwise kernels), and
        # over every kernel beside it
        "name": variant.name,
        "sparsity": (vm.get("sparsity_reached") or {}).get("overall", vm["sparsity"]),
        "all_kernel_sparsity": vm["sparsity"], "int8_accuracy": vm["test_accuracy"],
        "float_accuracy": vm["keras_test_accuracy"], "base_accuracy": vm.get("base_test_accuracy"),
        "int8_bytes": vm["tflite_bytes"], "base_float32_bytes": base_f32,
        "seconds": time.perf_counter() - t0,
    }
    return out


def print_digits(d: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The digits table and its targets as (target, met, measured)."""
    print(f"\ndigits as {d['size']}x{d['size']} PNGs ({d['images']} images): test accuracy")
    for model, m in d["models"].items():
        label = "mobilenetv2 alpha 0.35" if model == "mobilenetv2" else "small cnn"
        print(f"  {label:<28} {m['accuracy']:.4f}  ({m['params']:,} params, {m['epochs']} epochs, "
              f"{m['seconds']:.0f} s)")
    for name, acc in sorted(d.get("baselines", {}).items()):
        print(f"  {'baseline ' + name.replace('_', '-'):<28} {acc:.4f}")
    c = d["compressed"]
    drop = (c["float_accuracy"] - c["int8_accuracy"]) * 100
    drop_base = ((c["base_accuracy"] or c["float_accuracy"]) - c["int8_accuracy"]) * 100
    ratio = c["int8_bytes"] / c["base_float32_bytes"]
    print(f"\nprune 0.5 + int8 ({c['name']}): sparsity {c['sparsity']:.3f} "
          f"(pruned layers; {c['all_kernel_sparsity']:.3f} over every kernel); int8 test accuracy "
          f"{c['int8_accuracy']:.4f}, drop {drop:.2f} pt vs its float model, {drop_base:.2f} pt vs base; "
          f"int8 size {ratio:.3f}x float32 ({c['int8_bytes']:,} / {c['base_float32_bytes']:,} B); "
          f"{c['seconds']:.0f} s")
    acc = d["models"]["mobilenetv2"]["accuracy"]
    return [
        (f"MobileNetV2 test accuracy >= {TARGET_ACCURACY:.2f}", acc >= TARGET_ACCURACY, f"{acc:.4f}"),
        (f"sparsity within {TARGET_SPARSITY_PT:g} points of 0.5",
         abs(c["sparsity"] - 0.5) * 100 <= TARGET_SPARSITY_PT, f"{c['sparsity']:.3f}"),
        (f"int8 accuracy drop <= {TARGET_INT8_DROP_PT:g} points", drop_base <= TARGET_INT8_DROP_PT,
         f"{drop_base:.2f} pt"),
    ]


# ----------------------------------------------------------------------------- (b) zoo

def _zoo_model(name: str, size: int) -> Any:
    k = keras()
    if name in RECURRENT:  # digits rows as 8 time steps of 8 features
        inputs = k.Input((8, 8, 1))
        x = getattr(k.layers, name)(32)(k.layers.Reshape((8, 8))(inputs))
        return k.Model(inputs, k.layers.Dense(10, activation="softmax")(x), name=name.lower())
    build = getattr(k.applications, name)
    return build(input_shape=(size, size, 3), weights=None, classes=10, **ZOO_OPTIONS.get(name, {}))


def _pretrain(model: Any, dataset: Any, epochs: int, seed: int) -> dict[str, Any]:
    """Training on the digits until validation accuracy stops improving (at most ``epochs``,
    patience ``PRETRAIN_PATIENCE``, best weights kept), as a user's model would have had, before
    it is imported.

    A network that has not learned gives near-uniform or arbitrary outputs, so int8 rounding
    flips its top-1 and validation refuses it for that alone: at 8 fixed epochs MobileNetV2
    reached 0.63 and RegNetX002 0.12. It is fed what import will feed it: raw pixels if it
    rescales its own, else standardised ones. Batch-norm momentum is set to edgeship's short-
    training 0.9, as ``edgeship train`` does: with keras.applications' 0.99-0.999 the moving
    averages do not leave their start in a few hundred steps, validation accuracy is noise and
    early stopping stops at random (seen: EfficientNetB0 0.41 after 5 epochs, 0.82 at 8 fixed).
    The statistics are recomputed on the train split afterwards and each layer's own momentum is
    put back, so the saved file is the stock model (compress then treats it as one).
    """
    from edgeship.training.batchnorm import batch_norm_layers, recompute_statistics, set_momentum
    from edgeship.training.imported import rescales_own_inputs
    from edgeship.training.stage import prepare

    k = keras()
    k.utils.set_random_seed(seed)
    arrays = prepare(dataset, raw_pixels=rescales_own_inputs(model) is not None).arrays
    stock = [(layer, layer.momentum) for layer in batch_norm_layers(model)]
    set_momentum(model)
    model.compile(optimizer=k.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    stop = k.callbacks.EarlyStopping("val_accuracy", patience=PRETRAIN_PATIENCE, restore_best_weights=True)
    history = model.fit(arrays["x_train"], arrays["y_train"], epochs=epochs, batch_size=32, verbose=0,
                        validation_data=(arrays["x_val"], arrays["y_val"]), callbacks=[stop])
    recompute_statistics(model, arrays["x_train"])
    for layer, momentum in stock:
        layer.momentum = momentum
    _, acc = model.evaluate(arrays["x_val"], arrays["y_val"], verbose=0)
    return {"val_accuracy": float(acc), "epochs": len(history.history["loss"])}


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def zoo_one(store: Any, name: str, folder: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One model through save -> import -> compress -> export; the first step that fails stops it.

    A step's ``EdgeshipError`` is its one-line reason; anything else is a bug in edgeship and is
    recorded as such (type and first line) so the table still prints.
    """
    from edgeship.compression.stage import CompressConfig, compress_run
    from edgeship.export.stage import ExportConfig, export_run
    from edgeship.training.stage import TrainConfig, adopt

    row: dict[str, Any] = {"model": name, "params": None, "sparsity": None, "exports": {}, "reason": None,
                           "step": None, "seconds": 0.0}
    t0 = time.perf_counter()

    def step(label: str, fn: Callable[[], Any]) -> Any:
        row["step"] = label
        try:
            return fn()
        except EdgeshipError as e:
            row["reason"] = f"{label}: {_one_line(e)}"
        except Exception as e:  # a raw traceback is a bug: name it, keep going
            row["reason"] = f"{label}: BUG {type(e).__name__}: {_one_line(e)}"
        return None

    path = work / f"{name}.keras"
    dataset = TrainConfig(dataset="digits", seed=args.seed) if name in RECURRENT else TrainConfig(
        dataset=str(folder), image_size=(args.zoo_size, args.zoo_size), seed=args.seed)
    model = step("build", lambda: _zoo_model(name, args.zoo_size))
    if model is not None:
        row["params"] = model.count_params()
        trained = step("pretrain", lambda: _pretrain(model, dataset, args.zoo_epochs, args.seed))
        if trained is not None:
            row["pretrained_val_accuracy"] = trained["val_accuracy"]
            row["pretrain_epochs"] = trained["epochs"]
        step("save", lambda: model.save(path))
    if row["reason"] is None:
        imported = step("import", lambda: adopt(store, path, dataset))
        if imported is not None:
            cfg = CompressConfig(prune=0.5, quantize="int8", epochs=args.zoo_tune_epochs, seed=args.seed)
            variant = step("compress", lambda: compress_run(imported.run, cfg))
            if variant is not None:
                row["sparsity"] = variant.metrics.get("sparsity")
                export = ExportConfig(variants=[variant.name], formats="tflite,onnx")
                results = step("export", lambda: export_run(imported.run, export))
                for r in results or []:
                    key = r.dir.name.removesuffix(".failed")
                    row["exports"][key] = r.validation
                    if r.artifact.get("int8_float_layers"):  # selective int8 (export.float_fallback)
                        row.setdefault("float_layers", {})[key] = r.artifact["int8_float_layers"]
                    why = f"export {key}: {r.validation['failures'][0][:600]}" if not r.passed else None
                    if why and not r.validation.get("ran"):  # the converter gave up: the path stops
                        row["reason"] = row["reason"] or why
                    elif why:  # it converted and ran, but does not match the Keras model
                        row["invalid"] = row.get("invalid") or why
    row["seconds"] = time.perf_counter() - t0
    shown = row["reason"] or ("goes through" + (f"; fails validation: {row['invalid']}"
                                                if row.get("invalid") else ", validated"))
    print(f"  {name}: {shown} ({row['seconds']:.0f} s)", flush=True)
    return row


def bench_zoo(store: Any, work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    folder = render_digits(work / f"digits{args.zoo_size}rgb", args.zoo_size, "RGB", rows=args.zoo_rows)
    side = f"{args.zoo_size}x{args.zoo_size}x3"
    print(f"zoo: up to {args.zoo_epochs} epochs from random weights, {side} digits PNGs "
          f"({sum(1 for _ in folder.rglob('*.png'))} images; LSTM/GRU on the 8x8 digits as 8 steps)",
          flush=True)
    return [zoo_one(store, name, folder, work, args) for name in args.zoo]


def print_zoo(rows: list[dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """The zoo table and its targets: no raw error, and every model validated everywhere or
    failing in one line that names the layer (a converter's, or the one int8 loses most)."""
    cols = ("tflite-float32", "tflite-int8", "onnx-float32")
    print("\nzoo (trained: validation accuracy / epochs before import, early stopping)")
    print("zoo: import -> compress (prune 0.5 + int8) -> export tflite, onnx -> validation")
    print(f"  {'model':<18} {'params':>11} {'trained':>8} {'sparsity':>8}  "
          + "  ".join(f"{c:<14}" for c in cols) + "  result")
    for r in rows:
        cells = []
        for c in cols:
            v = r["exports"].get(c)
            if v is None or not v.get("ran"):
                cells.append("-" if v is None else "not converted")
            else:  # top-1 agreement with the Keras model; * kept some layers in float
                mark = "*" if c in r.get("float_layers", {}) else ""
                verdict = "ok" if v.get("passed") else "invalid"
                cells.append(f"{verdict} {v['top1_agreement'] or 0:.3f}{mark}")
        sparsity = "-" if r["sparsity"] is None else f"{r['sparsity']:.3f}"
        params = "-" if r["params"] is None else f"{r['params']:,}"
        trained = ("-" if r.get("pretrained_val_accuracy") is None
                   else f"{r['pretrained_val_accuracy']:.3f}/{r.get('pretrain_epochs', '?')}")
        print(f"  {r['model']:<18} {params:>11} {trained:>8} {sparsity:>8}  "
              + "  ".join(f"{c:<14}" for c in cells)
              + f"  {'goes through' if r['reason'] is None else 'stops'} ({r['seconds']:.0f} s)")
    through = sum(r["reason"] is None for r in rows)
    valid = sum(r["reason"] is None and not r.get("invalid") for r in rows)
    print(f"  {through} of {len(rows)} go through")
    print(f"  {valid} of {len(rows)} also pass every validation")
    for r in rows:
        for fmt, layers in r.get("float_layers", {}).items():
            print(f"  * {r['model']} {fmt}: full int8 was refused; validated with {len(layers)} layer(s) in "
                  f"float: {', '.join(layers)}")
    for r in rows:
        if r["reason"] is not None:
            print(f"  why {r['model']} stops: {r['reason']}")
        elif r.get("invalid"):
            print(f"  {r['model']} fails validation: {r['invalid']}")
    bugs = [r["model"] for r in rows if r["reason"] and ": BUG " in r["reason"]]
    unnamed = [r["model"] for r in rows if (r["reason"] or r.get("invalid"))
               and not NAMES_A_LAYER.search(r["reason"] or r["invalid"])]
    return [("every zoo model goes through or stops in one line", not bugs,
             f"{through}/{len(rows)} through" + (f", raw errors: {', '.join(bugs)}" if bugs else "")),
            ("every zoo model validates, or fails in one line naming a layer", not bugs and not unnamed,
             f"{valid}/{len(rows)} validated"
             + (f"; no layer named for {', '.join(unnamed)}" if unnamed else ""))]


# ----------------------------------------------------------------------------- main

def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m edgeship.benchmarks.suites.real_models",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default="digits,zoo", help="digits, zoo or both (comma list)")
    parser.add_argument("--image-size", type=int, default=96, help="(a) the rendered digits' side")
    parser.add_argument("--digits-rows", type=int, default=None, help="(a) this many digits (default all)")
    parser.add_argument("--epochs", type=int, default=None, help="(a) training epochs (default: train's)")
    parser.add_argument("--tune-epochs", type=int, default=None,
                        help="(a) pruning fine-tuning epochs (default: compress's)")
    parser.add_argument("--zoo-epochs", type=int, default=30,
                        help="(b) at most this many epochs on the digits before import (early stopping)")
    parser.add_argument("--zoo-tune-epochs", type=int, default=6,
                        help="(b) pruning fine-tuning epochs (default 6, compress's own; at 2 a pruned "
                             "MobileNetV2 fell from 0.78 to 0.38)")
    parser.add_argument("--zoo", default=",".join(ZOO), help="(b) comma list of models")
    parser.add_argument("--zoo-size", type=int, default=64,
                        help="(b) the applications' input side (at 32 most learned little in 8 epochs)")
    parser.add_argument("--zoo-rows", type=int, default=600, help="(b) digits rendered for the zoo")
    args = parse_args(parser, argv, SMOKE)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not args.parts or any(p not in ("digits", "zoo") for p in args.parts):
        parser.error("--parts takes digits, zoo or digits,zoo")
    args.zoo = [z.strip() for z in args.zoo.split(",") if z.strip()]
    unknown = [z for z in args.zoo if z not in ZOO]
    if unknown:
        parser.error(f"unknown zoo model {unknown[0]}; choose from {', '.join(ZOO)}")
    for flag in ("epochs", "tune_epochs", "zoo_epochs", "zoo_tune_epochs", "digits_rows", "zoo_rows"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.image_size < 32 or args.zoo_size < 32:
        parser.error("--image-size and --zoo-size must be at least 32 (MobileNetV2's smallest input)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)

    root = args.runs_dir or Path(tempfile.mkdtemp(prefix="edgeship-real-"))
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=root))
    store = RunStore(root / "runs")
    targets: list[tuple[str, bool, str]] = []
    digits = bench_digits(store, work, args) if "digits" in args.parts else None
    zoo = bench_zoo(store, work, args) if "zoo" in args.parts else None
    if digits is not None:
        targets += print_digits(digits)
    if zoo is not None:
        targets += print_zoo(zoo)
    print("\ntargets")
    for label, ok, measured in targets:
        print(f"  {label}: {measured}: {'MET' if ok else 'NOT MET'}")
    print(f"runs kept in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

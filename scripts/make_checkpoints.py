"""Produce the shipped checkpoints and result files of ``data/checkpoints/``.

Stages (pick with ``--stages``):

- ``main``: for each scale, pre-train E-Net, train the M = 4 mixture (Eq. 12) and the
  single-network baseline with the same budget, save ``x{u}_{encoder,mixture,single}.pt``
  and evaluate them (bicubic beside them) on the evaluation sets.
  ``--models`` trains only some of the three (``encoder mixture`` or ``single``, e.g. one
  model per call on a borrowed GPU; a mixture without ``encoder`` starts from the
  ``x{u}_encoder.pt`` already in ``--out``); each model is evaluated and its sidecar gets its
  metrics, and the ``results`` stage then writes ``x{u}_results.json``.
  With ``--seed N`` other than 0 the models are a replicate: trained with seed ``N`` and
  saved as ``x{u}_{kind}_seedN.pt`` beside the first run's files (a mixture without
  ``encoder`` still starts from ``x{u}_encoder.pt``); no results file is written for them.
- ``ablations`` (×2): the variants of Table 3 trained with the mixture's budget, reusing the
  ×2 pre-trained E-Net: ``x2_average.pt``, ``x2_uniform.pt`` (without pre-training),
  ``x2_hard.pt`` (hard selection with training). "Hard selection" without training is the
  mixture evaluated with ``mode='hard'``.
- ``msweep`` (×2): PSNR against the number of experts M (Fig. 3), a shorter budget per M,
  results only: ``x2_msweep.json``.
- ``evaluate``: for each scale, evaluate the three checkpoints already in ``--out`` (as the
  main stage does after training) and write their metrics into the sidecars and
  ``x{u}_results.json``; for checkpoints trained elsewhere. What they were trained on stays
  as their sidecars record it; without an evaluation set (Set5 or ``--eval-bundled``) the
  stage, like ``fusions``, is refused.
- ``results``: for each scale, ``x{u}_results.json`` from the metrics already in the three
  sidecars (no model is run), with bicubic measured here on the same evaluation sets.
- ``fusions``: for each scale, the mixture in ``--out`` with its experts combined four ways
  (:func:`tutorial_lib.training.evaluate_fusions`: ``q`` from the whole image, ``q`` from
  ``--posterior-tile`` tiles, the plain average, the oracle expert):
  ``x{u}_mixture_fusions.json``.
- ``equalsteps``: for each scale, the single network trained for as many *steps* as the
  shipped mixture (the main stage gives it the same *seconds*, in which one network makes
  more steps than four), results only: ``x{u}_single_equal_steps.json``.
- ``warmstart``: for each scale, a budget experiment that is not in the paper: the single
  network trained for ``--warm-fraction`` of the joint seconds, then the mixture started
  from ``M`` copies of it (``train_mixture(init_experts=...)``, E-Net from ``x{u}_encoder.pt``
  in ``--out``) trained for the rest, so that it costs the seconds of one mixture or one
  single network; evaluated four ways as in ``fusions``, beside the single network it
  started from and the ``main`` stage's mixture and single network when their sidecars hold
  metrics: ``x{u}_warm_start.json`` (results only; with ``--seed N`` other than 0,
  ``x{u}_warm_start_seedN.json``, a replicate beside the first run).
- ``matrix`` (×2): Fig. 1's performance matrix — single networks each trained on one kernel,
  evaluated on every representative kernel: ``x2_matrix.json``.

``--data`` takes a folder of images, a bundled name (``bundled-train``; ``bundled`` means the
same, as for ``python -m tutorial_lib train``) or an ``.npz`` of Y
images; ``--pack-data FILE.npz`` writes such a file from ``--data`` and exits. It stores each
Y as 16 bits (``round(Y * 255 * 256)``, at most 7.7e-6 from the float Y in [0, 1]): T91's
91 images take 10 MB instead of 16 MB of PNG, for copying to a machine with a size limit.

Examples (T91 from a local folder; README "Checkpoints" lists the exact commands of the
shipped files): the ``gpu`` set in ``data/checkpoints/`` and the ``cpu`` study in
``data/checkpoints/cpu/``::

    python scripts/make_checkpoints.py --data path/to/T91 --budget gpu --stages main --scales 2 --eval-bundled \
        --out data/checkpoints
    python scripts/make_checkpoints.py --data path/to/T91 --budget cpu --out data/checkpoints/cpu \
        --stages main ablations msweep matrix
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from tutorial_lib import kernels as kernel_lib
from tutorial_lib import training as T
from tutorial_lib.checkpoints import (
    CheckpointError,
    _atomic_write,
    check_output_folder,
    load_checkpoint,
    read_sidecar,
    rewrite_sidecar,
    sidecar_path,
)
from tutorial_lib.data import DataError, find_local_benchmark, load_folder, load_images
from tutorial_lib.degradations import centre_crop
from tutorial_lib.models import device_of

MATRIX_KERNELS = (  # representative seen kernels: narrow/wide, three orientations
    ("λ=(0.75,1.5) θ=2π/8", 0.75, 1.5, 2),
    ("λ=(0.75,3) θ=0", 0.75, 3.0, 0),
    ("λ=(0.75,3) θ=4π/8", 0.75, 3.0, 4),
    ("λ=(2.25,3) θ=2π/8", 2.25, 3.0, 2),
)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _write_json(path: Path, payload: dict) -> None:
    text = json.dumps(payload, indent=2) + "\n"
    _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


Y_STEPS = 255 * 256  # --pack-data: Y in [0, 1] stored as round(Y * Y_STEPS) in 16 bits
KINDS = ("encoder", "mixture", "single")


SHIPPED = Path(__file__).resolve().parents[1] / "data" / "checkpoints"
TRAINING_STAGES = ("main", "warmstart", "equalsteps", "ablations", "msweep", "matrix")


def load_training_images(source: str) -> tuple[dict[str, np.ndarray], str]:
    """``{name: Y}`` (float64 in [0, 1]) and a label for the sidecars, from a folder, an
    ``.npz`` of Y images (16-bit as ``--pack-data`` writes them, or float) or a
    :func:`tutorial_lib.data.load_images` source."""
    if source.endswith(".npz"):
        if not os.path.isfile(source):
            raise SystemExit(f"error: --data {source!r}: no such file")
        unreadable = f"error: --data {source!r} is not a readable .npz of Y images"
        try:
            packed = np.load(source)
            if isinstance(packed, np.ndarray):
                raise SystemExit(f"{unreadable} (it holds one array, not named images)")
            with packed:
                arrays = {name: packed[name] for name in packed.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise SystemExit(f"{unreadable} ({type(err).__name__}: {err})") from None
        images = {}
        for name, array in arrays.items():
            if array.ndim != 2:
                raise SystemExit(f"error: {source}: {name!r} is not a 2-D Y image (shape {array.shape})")
            if array.dtype == np.uint16:
                images[name] = array.astype(np.float64) / Y_STEPS
            elif np.issubdtype(array.dtype, np.floating):
                images[name] = array.astype(np.float64)
            else:
                raise SystemExit(f"error: {source}: {name!r} has dtype {array.dtype} (expected uint16 or float)")
            if not 0.0 <= images[name].min() <= images[name].max() <= 1.0:
                raise SystemExit(f"error: {source}: {name!r} holds values outside [0, 1]")
        if not images:
            raise SystemExit(f"error: {source} holds no image")
        return images, Path(source).stem
    if os.path.isdir(source):
        return load_folder(source), Path(source).name
    if source.strip().lower() == "bundled":  # as `python -m tutorial_lib train --data bundled`: never the test photographs
        source = "bundled-train"
    return load_images(source), source


def pack_images(images: dict[str, np.ndarray], path: Path) -> None:
    """Write ``images`` as 16-bit Y into ``path`` (``.npz``), atomically."""
    packed = {name: np.round(np.clip(y, 0.0, 1.0) * Y_STEPS).astype(np.uint16) for name, y in images.items()}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file handle: np.savez would add '.npz' to a name
            np.savez_compressed(handle, **packed)

    _atomic_write(path, write)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="bundled-train",
                        help="training images: a folder, a load_images source, or an .npz of Y images")
    parser.add_argument("--pack-data", default=None, metavar="FILE.npz",
                        help="write --data as 16-bit Y images into FILE.npz and exit")
    parser.add_argument("--models", nargs="+", default=list(KINDS), choices=KINDS,
                        help="main stage: which of the three models to train (default all)")
    parser.add_argument("--budget", default="cpu", choices=["smoke", "cpu", "gpu"])
    parser.add_argument("--scales", type=int, nargs="+", default=[2, 3, 4], choices=[2, 3, 4])
    parser.add_argument("--stages", nargs="+", default=["main"],
                        choices=["main", "evaluate", "results", "fusions", "warmstart", "equalsteps", "ablations",
                                 "msweep", "matrix"])
    parser.add_argument("--out", default=None,
                        help="output folder; stages that train need it named (data/checkpoints holds the shipped "
                             "checkpoints: --out data/checkpoints replaces them); the others default to it")
    parser.add_argument("--set5", default=None, help="folder of Set5 (default: a local copy if any; 'none': skip)")
    parser.add_argument("--eval-bundled", action="store_true", help="also evaluate on the bundled test images")
    parser.add_argument("--ablations", nargs="+", default=["average", "uniform", "hard"],
                        choices=["average", "uniform", "hard"], help="which ablations to train")
    parser.add_argument("--posterior-tile", type=int, default=24,
                        help="fusions stage: side of the LR tiles E-Net's q is averaged over (default 24)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--pretrain-seconds", type=float, default=None, help="override the budget's E-Net seconds")
    parser.add_argument("--joint-seconds", type=float, default=None,
                        help="override the budget's seconds for the mixture (and the single network)")
    parser.add_argument("--note", default=None,
                        help="a line recorded in every sidecar and result file (e.g. what shared the machine)")
    parser.add_argument("--warm-fraction", type=float, default=0.5,
                        help="warmstart stage: share of the joint seconds for the single network (default 0.5)")
    parser.add_argument("--seed", type=int, default=0,
                        help="main and warmstart stages: seed of the models they train (default 0); "
                             "another seed writes replicate files (x{u}_{kind}_seedN, x{u}_warm_start_seedN)")
    parser.add_argument("--msweep-seconds", type=float, default=90.0)
    parser.add_argument("--matrix-seconds", type=float, default=90.0)
    parser.add_argument("--sweep-eval-side", type=int, default=128,
                        help="msweep/matrix: evaluate on centre crops of this side (whole images: 0)")
    args = parser.parse_args(argv)
    if "warmstart" in args.stages and not 0.0 < args.warm_fraction < 1.0:
        raise SystemExit(f"error: --warm-fraction must lie strictly between 0 and 1, got {args.warm_fraction}")
    training = [stage for stage in args.stages if stage in TRAINING_STAGES]
    if args.out is None and training and not args.pack_data:  # the default folder holds the shipped checkpoints
        raise SystemExit(f"error: --stages {' '.join(training)} trains models: name the folder with --out "
                         f"(--out {SHIPPED.relative_to(SHIPPED.parents[1])} replaces the shipped checkpoints)")
    if args.sweep_eval_side < 0:
        raise SystemExit(f"error: --sweep-eval-side must be a side in pixels or 0 (whole images), got {args.sweep_eval_side}")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"error: --threads must be a positive integer, got {args.threads}")
    for name in ("msweep_seconds", "matrix_seconds", "pretrain_seconds", "joint_seconds"):
        if getattr(args, name) is None:
            continue
        if not math.isfinite(getattr(args, name)) or getattr(args, name) <= 0:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be a positive number of seconds, "
                             f"got {getattr(args, name)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    images, data_label = load_training_images(args.data)
    if args.pack_data:
        if not args.pack_data.endswith(".npz"):
            raise SystemExit(f"error: --pack-data {args.pack_data!r} must end with .npz")
        pack_images(images, Path(args.pack_data))
        _log(f"wrote {len(images)} images of {data_label} to {args.pack_data}")
        return
    out = check_output_folder(SHIPPED if args.out is None else args.out, "--out")
    set5_dir = None if args.set5 == "none" else (args.set5 or find_local_benchmark("Set5"))
    eval_sets = {}
    if set5_dir:
        eval_sets["Set5"] = load_folder(set5_dir)
    elif args.set5 != "none":
        _log("Set5: no local copy (pass --set5 DIR, set TUTORIAL_SET5_DIR, or fetch it once with "
             "tutorial_lib.data.fetch_benchmark('Set5')): the sidecars get no Set5 metrics")
    if args.eval_bundled:
        eval_sets["bundled-test"] = load_images("bundled-test")
    only_evaluate = [stage for stage in ("evaluate", "fusions", "msweep") if stage in args.stages]
    if only_evaluate and not eval_sets:  # they would overwrite stored metrics with nothing
        raise SystemExit(f"error: --stages {' '.join(only_evaluate)} evaluate on Set5 or the bundled test images, and "
                         "neither is here: pass --set5 DIR (or set TUTORIAL_SET5_DIR) and/or --eval-bundled")
    budget = T.get_training_budget(args.budget)
    overrides = {k: v for k, v in (("pretrain_seconds", args.pretrain_seconds),
                                   ("joint_seconds", args.joint_seconds)) if v is not None}
    if overrides:
        budget = T.with_overrides(budget, **overrides)
    out.mkdir(parents=True, exist_ok=True)
    _log(f"data={data_label} ({len(images)} images) budget={budget.name} threads={torch.get_num_threads()} "
         f"eval={list(eval_sets)}")

    if "main" in args.stages and (set(args.models) != set(KINDS) or args.seed != 0):
        for scale in args.scales:
            _train_some(args.models, images, scale, budget, out, eval_sets, data_label, args.note, args.seed)
    elif "main" in args.stages:
        for scale in args.scales:
            _log(f"x{scale}: encoder + mixture + single")
            result = T.train_all(images, scale, budget, out, progress=False, eval_images=eval_sets)
            for kind, path in result["paths"].items():
                _set_training_data(Path(path), data_label, args.note)
            steps = {k: h.meta["steps"] for k, h in result["histories"].items()}
            _write_results(out, scale, budget.summary(), data_label, args.note,
                           result["histories"]["mixture"].meta.get("device_name"), steps, result["wall_time_s"],
                           result["metrics"])
            _log(f"x{scale}: done steps={steps} {json.dumps(result['metrics'])}")

    if "evaluate" in args.stages:
        for scale in args.scales:
            paths = {kind: out / f"x{scale}_{kind}.pt" for kind in ("encoder", "mixture", "single")}
            models, sidecars = {}, {}
            for kind, path in paths.items():
                models[kind], sidecars[kind] = load_checkpoint(path, expected_kind=kind, scale=scale)
            _log(f"x{scale}: evaluating the checkpoints in {out}")
            metrics = T.evaluate_trained(models["encoder"], models["mixture"], models["single"], eval_sets, scale,
                                         max_side=budget.eval_max_side)
            for kind, path in paths.items():  # metrics only: what the models were trained on stays recorded
                T.update_sidecar_metrics(path, metrics[kind])
            _write_results_of(out, scale, sidecars, args.note, metrics)
            _log(f"x{scale}: {json.dumps(metrics)}")

    if "results" in args.stages:
        for scale in args.scales:
            _results_from_sidecars(out, scale, eval_sets, budget, args.note)

    if "fusions" in args.stages:
        for scale in args.scales:
            path = out / f"x{scale}_mixture.pt"
            model, sidecar = load_checkpoint(path, expected_kind="mixture", scale=scale)
            _log(f"x{scale}: the mixture's experts combined four ways (q from {args.posterior_tile}x"
                 f"{args.posterior_tile} tiles)")
            start = time.time()
            metrics = _on_each_set(T.evaluate_fusions, model, eval_sets, scale, budget,
                                   posterior_tile=args.posterior_tile)
            _write_json(out / f"x{scale}_mixture_fusions.json", {
                "scale": scale, "model": path.name, "sha256": sidecar["sha256"],
                "posterior_tile": args.posterior_tile, "note": args.note, "training_note": sidecar.get("note"),
                "evaluated_on": str(device_of(model)), "seconds": round(time.time() - start, 1),
                "metrics": metrics})
            _log(f"x{scale} fusions: {json.dumps(metrics)}")

    if "warmstart" in args.stages:
        for scale in args.scales:
            _warm_start(images, scale, budget, out, eval_sets, data_label, args.note, args.warm_fraction,
                        args.posterior_tile, args.seed)

    if "equalsteps" in args.stages:
        for scale in args.scales:
            sidecar = read_sidecar(out / f"x{scale}_mixture.pt")  # its steps and time: the mixture must be there
            steps = int(sidecar["steps"])
            equal = T.with_overrides(budget, clock="steps", joint_steps=steps,
                                     joint_seconds=max(4 * sidecar["wall_time_s"], 60.0))
            _log(f"x{scale}: single network for the mixture's {steps} steps")
            model, history = T.train_single(images, scale, equal, progress=False)
            metrics = _on_each_set(T.evaluate_model, model, eval_sets, scale, budget)
            _write_json(out / f"x{scale}_single_equal_steps.json", {
                "scale": scale, "budget": equal.summary(), "data": data_label, "note": args.note,
                "device_name": history.meta.get("device_name"), "steps": history.meta["steps"],
                "wall_time_s": round(history.meta["wall_time_s"], 2), "mixture_steps": steps,
                "mixture_wall_time_s": sidecar["wall_time_s"], "metrics": metrics})
            _log(f"x{scale}: single, {history.meta['steps']} steps in {history.meta['wall_time_s']:.0f} s: "
                 f"{json.dumps(metrics)}")

    if "ablations" in args.stages:
        variants = {"average": {"variant": "average"}, "uniform": {"prior": "uniform"}, "hard": {"variant": "hard"}}
        if "hard" in args.ablations:
            variants["hard"]["encoder"] = load_checkpoint(out / "x2_encoder.pt", expected_kind="encoder",
                                                          scale=2)[0]
        for name in args.ablations:
            kwargs = variants[name]
            _log(f"x2 ablation {name}")
            model, history = T.train_mixture(images, 2, budget, progress=False, **kwargs)
            path = T.save_trained(model, out / f"x2_{name}.pt", "mixture", history, budget, 0,
                                  extra={"ablation": name})
            metrics = {s: T.evaluate_model(model, imgs, 2) for s, imgs in eval_sets.items()}
            T.update_sidecar_metrics(path, metrics)
            _set_training_data(path, data_label, args.note)
            _log(f"x2 ablation {name}: {json.dumps(metrics)}")
        if "hard" in args.ablations:
            mixture, mixture_sidecar = load_checkpoint(out / "x2_mixture.pt", expected_kind="mixture", scale=2)
            hard = {s: T.evaluate_model(mixture, imgs, 2, output="hard") for s, imgs in eval_sets.items()}
            _write_json(out / "x2_hard_selection_eval.json", {
                "model": "x2_mixture.pt", "model_sha256": mixture_sidecar["sha256"],
                "budget": mixture_sidecar["budget_settings"], "mode": "hard", "metrics": hard})
            _log(f"x2 hard selection (no training): {json.dumps(hard)}")

    if "msweep" in args.stages:
        short = T.with_overrides(budget, joint_seconds=args.msweep_seconds,
                                 pretrain_seconds=min(budget.pretrain_seconds or 60, args.msweep_seconds / 2))
        rows = []
        for M in (1, 2, 4, 6, 8):
            start = time.time()
            if M == 1:
                model, history = T.train_single(images, 2, short, progress=False)
            else:
                model, history = T.train_mixture(images, 2, short, M=M, progress=False)
            metrics = {s: T.evaluate_model(model, imgs, 2, max_side=args.sweep_eval_side or None)
                       for s, imgs in eval_sets.items()}
            rows.append({"M": M, "steps": history.meta["steps"], "wall_time_s": round(time.time() - start, 1),
                         "metrics": metrics})
            _log(f"M={M}: {json.dumps(metrics)}")
        _write_json(out / "x2_msweep.json", {"budget": short.summary(), "data": data_label, "rows": rows,
                                             "eval_crop_side": args.sweep_eval_side or None,
                                             "note": "M=1 is the single network trained with the joint budget"})

    if "matrix" in args.stages:
        short = T.with_overrides(budget, joint_seconds=args.matrix_seconds)
        test_kernels = np.stack([kernel_lib.anisotropic_gaussian(a, b, t * np.pi / 8)
                                 for _, a, b, t in MATRIX_KERNELS])
        names = [label for label, *_ in MATRIX_KERNELS]
        eval_images = eval_sets.get("Set5") or load_images("bundled-test")
        if args.sweep_eval_side:
            eval_images = {k: centre_crop(v, args.sweep_eval_side, 2) for k, v in eval_images.items()}
        rows = []
        for label, a, b, t in MATRIX_KERNELS:
            kernel = kernel_lib.anisotropic_gaussian(a, b, t * np.pi / 8)[None]
            model, history = T.train_single(images, 2, short, progress=False, kernels=kernel)
            psnr = [_psnr_on(model, eval_images, k) for k in test_kernels]
            rows.append({"trained_on": label, "steps": history.meta["steps"], "psnr": psnr})
            _log(f"matrix {label}: {psnr}")
        extra = {}
        for key in ("x2_single", "x2_mixture"):
            path = out / f"{key}.pt"
            if path.exists():
                model, _ = load_checkpoint(path, scale=2)
                extra[key] = [_psnr_on(model, eval_images, k) for k in test_kernels]
        extra["bicubic"] = [_psnr_on(None, eval_images, k) for k in test_kernels]
        _write_json(out / "x2_matrix.json", {"budget": short.summary(), "data": data_label, "kernels": names,
                                             "eval_images": "Set5" if "Set5" in eval_sets else "bundled-test",
                                             "eval_crop_side": args.sweep_eval_side or None,
                                             "rows": rows, "reference": extra})


def _train_some(models: list[str], images: dict, scale: int, budget, out: Path, eval_sets: dict,
                data_label: str, note: str | None, seed: int = 0) -> None:
    """The main stage for some of the three models, or for a replicate with another seed:
    train, save, evaluate each."""
    suffix = f"_seed{seed}" if seed else ""
    _log(f"x{scale}: {' + '.join(models)}" + (f" (seed {seed})" if seed else ""))
    encoder = None
    trained = {}
    if "encoder" in models:
        encoder, history = T.pretrain_encoder(images, scale, budget, seed=seed, progress=False)
        if budget.recalibrate_bn:
            T.recalibrate_batchnorm(encoder, list(images.values()), scale)
        trained["encoder"] = (encoder, T.save_trained(encoder, out / f"x{scale}_encoder{suffix}.pt", "encoder",
                                                      history, budget, seed, config={"scale": scale}), history)
    if "mixture" in models:
        if encoder is None:
            encoder, _ = load_checkpoint(out / f"x{scale}_encoder.pt", expected_kind="encoder", scale=scale)
        mixture, history = T.train_mixture(images, scale, budget, encoder=encoder, seed=seed, progress=False)
        trained["mixture"] = (mixture, T.save_trained(mixture, out / f"x{scale}_mixture{suffix}.pt", "mixture",
                                                      history, budget, seed), history)
    if "single" in models:
        single, history = T.train_single(images, scale, budget, seed=seed, progress=False)
        trained["single"] = (single, T.save_trained(single, out / f"x{scale}_single{suffix}.pt", "single", history,
                                                    budget, seed), history)
    for kind, (model, path, history) in trained.items():
        evaluate = T.encoder_metrics if kind == "encoder" else T.evaluate_model
        metrics = _on_each_set(evaluate, model, eval_sets, scale, budget)
        T.update_sidecar_metrics(path, metrics)
        _set_training_data(path, data_label, note)
        _log(f"x{scale} {kind}: {history.meta['steps']} steps in {history.meta['wall_time_s']:.0f} s "
             f"on {history.meta.get('device_name')}: {json.dumps(metrics)}")


def _on_each_set(evaluate, model, eval_sets: dict, scale: int, budget, **kwargs) -> dict:
    """``{set name: evaluate(model, images, scale, max_side=budget.eval_max_side, **kwargs)}``."""
    return {name: evaluate(model, images, scale, max_side=budget.eval_max_side, **kwargs)
            for name, images in eval_sets.items()}


def _warm_start(images: dict, scale: int, budget, out: Path, eval_sets: dict, data_label: str,
                note: str | None, fraction: float, posterior_tile: int, seed: int = 0) -> None:
    """The ``warmstart`` stage for one scale (module doc): ``x{scale}_warm_start.json``."""
    if budget.joint_seconds is None:
        raise SystemExit(f"error: the warmstart stage splits the joint seconds, and budget {budget.name!r} has none")
    encoder, _ = load_checkpoint(out / f"x{scale}_encoder.pt", expected_kind="encoder", scale=scale)
    first = T.with_overrides(budget, joint_seconds=fraction * budget.joint_seconds)
    rest = T.with_overrides(budget, joint_seconds=(1.0 - fraction) * budget.joint_seconds)
    _log(f"x{scale}: warm start: single network {first.joint_seconds:g} s, then the mixture from "
         f"{rest.joint_seconds:g} s of copies of it")
    single, single_history = T.train_single(images, scale, first, seed=seed, progress=False)
    mixture, mixture_history = T.train_mixture(images, scale, rest, encoder=encoder, init_experts=single, seed=seed,
                                               progress=False)
    start = time.time()
    metrics = {"single_start": _on_each_set(T.evaluate_model, single, eval_sets, scale, budget),
               "warm_mixture": _on_each_set(T.evaluate_fusions, mixture, eval_sets, scale, budget,
                                            posterior_tile=posterior_tile)}
    reference = {}
    for kind in ("mixture", "single"):
        side = sidecar_path(out / f"x{scale}_{kind}.pt")
        if side.is_file():
            sidecar = json.loads(side.read_text(encoding="utf-8"))
            reference[kind] = {"steps": sidecar.get("steps"), "wall_time_s": sidecar.get("wall_time_s"),
                               "metrics": sidecar.get("metrics", {})}
    name = f"x{scale}_warm_start.json" if seed == 0 else f"x{scale}_warm_start_seed{seed}.json"
    _write_json(out / name, {
        "scale": scale, "budget": budget.summary(), "data": data_label, "note": note, "seed": seed, "fraction": fraction,
        "posterior_tile": posterior_tile, "encoder": f"x{scale}_encoder.pt",
        "device_name": mixture_history.meta.get("device_name"),
        "steps": {"single_start": single_history.meta["steps"], "warm_mixture": mixture_history.meta["steps"]},
        "wall_time_s": {"single_start": round(single_history.meta["wall_time_s"], 2),
                        "warm_mixture": round(mixture_history.meta["wall_time_s"], 2)},
        "evaluation_s": round(time.time() - start, 1), "metrics": metrics, "main_stage": reference})
    _log(f"x{scale} warm start: {json.dumps(metrics)}")


def _results_from_sidecars(out: Path, scale: int, eval_sets: dict, budget, note: str | None) -> None:
    """``x{scale}_results.json`` from the three sidecars' metrics, bicubic measured here."""
    sidecars = {}
    for kind in KINDS:
        try:
            _, sidecars[kind] = load_checkpoint(out / f"x{scale}_{kind}.pt", expected_kind=kind, scale=scale)
        except CheckpointError as error:
            raise SystemExit(f"error: x{scale} results need the {kind} checkpoint: {error}") from error
    metrics = {kind: sidecars[kind].get("metrics", {}) for kind in KINDS}
    sets = set(metrics["mixture"])
    if not sets or any(set(metrics[kind]) != sets for kind in KINDS):
        raise SystemExit(f"error: x{scale}: the sidecars hold metrics for different evaluation sets "
                         f"({ {kind: sorted(metrics[kind]) for kind in KINDS} }); evaluate them with "
                         "--stages evaluate")
    missing = sets - set(eval_sets)
    if missing:
        raise SystemExit(f"error: x{scale}: bicubic needs the evaluation sets {sorted(missing)} here "
                         "(pass --set5 DIR and/or --eval-bundled)")
    metrics["bicubic"] = {name: T.evaluate_model("bicubic", eval_sets[name], scale, max_side=budget.eval_max_side)
                          for name in sorted(sets)}
    _write_results_of(out, scale, sidecars, note, metrics)
    _log(f"x{scale}: results from the sidecars: {json.dumps(metrics)}")


def _write_results(out: Path, scale: int, budget: dict, data_label: str, note: str | None,
                   device_name: str | None, steps: dict, wall_time_s: dict, metrics: dict) -> None:
    """``x{scale}_results.json``: every metric of one scale (bicubic included), with its budget,
    data, device, steps and wall times per stage."""
    _write_json(out / f"x{scale}_results.json", {
        "scale": scale, "budget": budget, "data": data_label, "note": note, "device_name": device_name,
        "steps": steps, "wall_time_s": wall_time_s, "metrics": metrics})


def _write_results_of(out: Path, scale: int, sidecars: dict, note: str | None, metrics: dict) -> None:
    """:func:`_write_results` for checkpoints on disk: budget, training data, device, steps and
    wall times from their sidecars (``{kind: sidecar}`` for encoder, mixture and single); the
    note is ``note``, else the mixture's."""
    stages = {"pretrain": "encoder", "mixture": "mixture", "single": "single"}
    mixture = sidecars["mixture"]
    _write_results(out, scale, mixture["budget_settings"], mixture.get("training_data", {}).get("source"),
                   note or mixture.get("note"),
                   sidecars["mixture"].get("device_name"),
                   {stage: sidecars[kind]["steps"] for stage, kind in stages.items()},
                   {stage: sidecars[kind]["wall_time_s"] for stage, kind in stages.items()}, metrics)


def _psnr_on(model, images, kernel) -> float:
    from tutorial_lib.evaluation import evaluate, model_method
    method = "bicubic" if model is None else model_method(model, 2)
    return round(evaluate(images, 2, kernel[None], method).psnr, 3)


def _set_training_data(path: Path, label: str, note: str | None = None) -> None:
    """Record the training set's name (the image names are there already) and the run's
    note, if any, in the sidecar."""
    def edit(sidecar: dict) -> None:
        sidecar.setdefault("training_data", {})["source"] = label
        if note:
            sidecar["note"] = note

    rewrite_sidecar(path, edit)


def run(argv: list[str] | None = None) -> int:
    """:func:`main` with bad input (a missing folder, an unreadable image or checkpoint) reported
    in one line and exit status 2, as ``python -m tutorial_lib`` does."""
    try:
        main(argv)
    except (DataError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SystemExit as stop:  # the script's own "error: ..." lines: the same status
        if not isinstance(stop.code, str):
            raise
        print(stop.code, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(run())

"""Command line: ``python -m tutorial_lib {demo,evaluate,train,bench} ...``.

- ``demo``: degrade a bundled photograph with a seen and an unseen kernel, restore it with
  bicubic (and the shipped checkpoints when present), write a figure and a PSNR/SSIM table.
- ``evaluate``: the paper's protocol over every image × kernel; ``--json`` prints one object.
- ``train``: pre-train E-Net, train the mixture and the single-network baseline (or one
  ablation variant) within a budget, and save checkpoints.
- ``bench``: training throughput (batched mixture vs. a loop over experts), inference time
  and peak memory on this machine.

Errors in the input (a missing folder, an unreadable image, a checkpoint for another scale)
end with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _scale(value: str) -> int:
    try:
        scale = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"scale must be 2, 3 or 4, got {value!r}") from None
    if scale not in (2, 3, 4):
        raise argparse.ArgumentTypeError(f"scale must be 2, 3 or 4 (the paper's factors), got {scale}")
    return scale


def _load_images(source: str) -> dict:
    from .data import load_images
    return load_images(source)


def _output_folder(value: str) -> Path:
    """``--out`` checked before any work (:func:`tutorial_lib.checkpoints.check_output_folder`)."""
    from .checkpoints import check_output_folder
    return check_output_folder(value, "--out")


# ------------------------------------------------------------------------------ evaluate
def _method_for(args: argparse.Namespace):
    from .config import get_device
    from .evaluation import bicubic_method, model_method
    device = get_device(args.device)  # checked whether or not a model uses it
    if args.model is None:
        if args.method not in (None, "bicubic"):
            raise CLIError(f"--method {args.method} needs --model PATH (a trained checkpoint)")
        if args.posterior_tile is not None:
            raise CLIError("--posterior-tile needs --model PATH (a mixture checkpoint)")
        return bicubic_method(args.scale), "bicubic"
    if args.method == "bicubic":
        raise CLIError("--method bicubic uses no model: drop --model, or choose --method fused, hard or average")
    from .checkpoints import load_checkpoint
    from .models import BlindSR, _check_tile
    _check_tile(args.posterior_tile, "--posterior-tile")  # before the checkpoint is read
    model, sidecar = load_checkpoint(args.model, scale=args.scale)
    output = args.method or "fused"
    if output != "fused" and not isinstance(model, BlindSR):
        raise CLIError(f"--method {output} combines the experts of a mixture; {args.model} is a "
                       f"{sidecar.get('kind')} network (use --method fused)")
    label = f"{sidecar.get('kind', 'model')}:{Path(args.model).name}:{output}"
    if args.posterior_tile is not None:
        if not isinstance(model, BlindSR):
            raise CLIError(f"--posterior-tile is for a mixture; {args.model} is a {sidecar.get('kind')} network")
        model.posterior_tile = args.posterior_tile
        label += f":q from {args.posterior_tile}x{args.posterior_tile} tiles"
    method = model_method(model, args.scale, output=output, device=device)
    return method, label


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``evaluate``: PSNR/SSIM of bicubic or a checkpoint over images x kernels; prints a table or JSON."""
    from .evaluation import evaluate
    method, label = _method_for(args)  # a checkpoint for another scale fails before any download
    images = _load_images(args.images)
    result = evaluate(images, args.scale, kernels=args.kernels, method=method,
                      ssim_variant=args.ssim, progress=not args.json and sys.stderr.isatty())
    summary = result.summary()
    summary.update(method=label, images=str(args.images))
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{label} on {args.images} (x{args.scale}, {args.kernels} kernels): "
              f"PSNR {result.psnr:.2f} dB  SSIM {result.ssim:.4f}  "
              f"({result.n_images} images x {result.n_kernels} kernels, {result.seconds:.1f} s)")
    return 0


# ---------------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    """``demo``: degrade a bundled photograph, restore it, write a figure and a table."""
    from .checkpoints import CheckpointError, checkpoint_dir
    from .demo import run_demo
    out = _output_folder(args.out)
    if args.checkpoints is not None and not args.no_models and not Path(args.checkpoints).expanduser().is_dir():
        raise CLIError(f"--checkpoints {args.checkpoints!r} is not a folder")
    try:
        folder = None if args.no_models else Path(args.checkpoints or checkpoint_dir()).expanduser()
    except CheckpointError as err:
        raise CLIError(str(err)) from err
    report = run_demo(image=args.image, scale=args.scale, out_dir=out, checkpoint_dir=folder)
    if folder is not None and {row["method"] for row in report["rows"]} == {"bicubic"}:
        print(f"note: no x{args.scale}_mixture.pt or x{args.scale}_single.pt in {folder}: bicubic only "
              "(set TUTORIAL_CHECKPOINT_DIR or pass --checkpoints)", file=sys.stderr)
    print(report["table"])
    print(f"figure: {report['figure']}")
    print(f"table:  {report['json']}")
    return 0


# --------------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    """``train``: train within a budget (see :func:`tutorial_lib.training.train_from_cli`); prints a JSON summary."""
    from .training import train_from_cli
    summary = train_from_cli(scale=args.scale, budget=args.budget, data=args.data,
                             out=_output_folder(args.out), variant=args.variant, M=args.experts,
                             seed=args.seed, resume=args.resume, evaluate_on=args.evaluate_on,
                             device=args.device)
    print(json.dumps(summary, indent=2))
    return 0


# --------------------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    """``bench``: :func:`tutorial_lib.bench.run_benchmark` for one or several batch sizes."""
    from .bench import format_report, run_benchmark
    results = [run_benchmark(device=args.device, seconds=args.seconds, channels=args.channels, n_blocks=args.n_blocks,
                             batch_size=batch_size, compile=args.compile, cuda_graph=args.cuda_graph,
                             layout=args.layout, compile_mode=args.compile_mode, profile_steps=args.profile)
               for batch_size in (args.batch_size or [None])]
    if args.json:  # one object for one batch size, a list for several
        print(json.dumps(results[0] if len(results) == 1 else results))
    else:
        print("\n\n".join(format_report(result) for result in results))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m tutorial_lib`` and its four sub-commands."""
    from .bench import COMPILE_MODES
    parser = argparse.ArgumentParser(
        prog="python -m tutorial_lib",
        description="Blind SR with a mixture of deep networks: demo, evaluation, training, benchmark.")
    parser.add_argument("--version", action="version", version=f"tutorial_lib {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="degrade a bundled photograph and restore it")
    demo.add_argument("--image", default="chelsea",
                      help="a bundled test image name, or a path to an image file (default chelsea)")
    demo.add_argument("--scale", type=_scale, default=2)
    demo.add_argument("--out", default="demo_output", help="folder for the figure and table")
    demo.add_argument("--checkpoints", default=None,
                      help="folder with trained checkpoints x{scale}_mixture.pt / x{scale}_single.pt "
                           "(default: $TUTORIAL_CHECKPOINT_DIR, else data/checkpoints)")
    demo.add_argument("--no-models", action="store_true", help="bicubic only")
    demo.set_defaults(func=cmd_demo)

    ev = sub.add_parser("evaluate", help="PSNR/SSIM on Y over every image x kernel (paper protocol)")
    ev.add_argument("--images", required=True,
                    help="'bundled' (offline default), a benchmark (Set5, Set14, B100, T91; "
                         "downloaded once) or a folder of images")
    ev.add_argument("--scale", type=_scale, required=True)
    ev.add_argument("--kernels", choices=["seen", "unseen", "unseen_clean", "all"], default="unseen")
    ev.add_argument("--method", default=None, choices=["bicubic", "fused", "hard", "average"],
                    help="without --model: bicubic (default); with --model: fused (Eq. 10, default), "
                         "hard or average (a single network: fused)")
    ev.add_argument("--model", default=None, help="a checkpoint (.pt) of a mixture or single network")
    ev.add_argument("--posterior-tile", type=int, default=None, metavar="P",
                    help="mixture only: q from E-Net on P x P tiles of the LR image, averaged "
                         "(default: E-Net on the whole image, as the paper)")
    ev.add_argument("--ssim", choices=["skimage", "matlab"], default="skimage",
                    help="SSIM variant: the paper's (scikit-image defaults) or MATLAB-style")
    ev.add_argument("--device", default=None,
                    help="where --model runs: cpu or cuda (default: $TUTORIAL_DEVICE, else cuda when available)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.set_defaults(func=cmd_evaluate)

    tr = sub.add_parser("train", help="pre-train E-Net and train the mixture within a budget")
    tr.add_argument("--scale", type=_scale, required=True)
    tr.add_argument("--budget", choices=["smoke", "cpu", "gpu"], default=None,
                    help="default: $TUTORIAL_BUDGET, 'smoke' under CI, 'gpu' with CUDA, else 'cpu'")
    tr.add_argument("--data", default="bundled",
                    help="'bundled' (offline training images), T91, or a folder of images")
    tr.add_argument("--out", required=True, help="output folder for checkpoints")
    tr.add_argument("--variant", default="all",
                    choices=["all", "mixture", "single", "encoder", "average", "uniform", "hard"],
                    help="all = encoder + mixture + single (default); the others train one "
                         "model (ablations of Table 3)")
    tr.add_argument("--experts", type=int, default=4, help="number of experts M (default 4)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--resume", default=None, help="continue from a checkpoint")
    tr.add_argument("--evaluate-on", default=None,
                    help="after training, evaluate on these images (e.g. Set5 or a folder)")
    tr.add_argument("--device", default=None, help="cpu or cuda (default: $TUTORIAL_DEVICE, else cuda when available)")
    tr.set_defaults(func=cmd_train)

    be = sub.add_parser("bench", help="training throughput, inference time, peak memory")
    be.add_argument("--device", default=None)
    be.add_argument("--seconds", type=float, default=None, help="time per measurement")
    be.add_argument("--channels", type=int, default=64, help="expert width (64 = paper)")
    be.add_argument("--n-blocks", type=int, default=7, help="residual blocks per expert (7 = paper)")
    be.add_argument("--batch-size", type=int, nargs="+", default=None,
                    help="patches per step, one or several (default 16 on a CPU, 256 on a GPU)")
    be.add_argument("--compile", action="store_true", help="also time the torch.compile'd mixture (CUDA)")
    be.add_argument("--compile-mode", choices=list(COMPILE_MODES), default="default",
                    help="torch.compile mode for --compile (default 'default'; 'reduce-overhead' adds CUDA graphs)")
    be.add_argument("--cuda-graph", action="store_true",
                    help="also time both variants captured in CUDA graphs (CUDA)")
    be.add_argument("--layout", choices=["channels_last", "contiguous"], default=None,
                    help="memory format (default: channels_last on CUDA, contiguous on the CPU)")
    be.add_argument("--profile", type=int, default=0, metavar="STEPS",
                    help="also profile this many training steps of each variant and show where the time goes")
    be.add_argument("--json", action="store_true")
    be.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit status: 0 on success, 2 with one ``error:``
    line for a user error (a malformed command line makes argparse exit with 2 itself), 130
    after Ctrl-C (files are written atomically, so an interrupt leaves the old ones whole)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CLIError, ValueError, FileNotFoundError, OSError) as error:
        # DataError, CheckpointError and bad-input ValueErrors all land here: one clear line.
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: {args.command} stopped; a file it had not finished was not written, "
              "earlier files are unchanged", file=sys.stderr)
        return 130

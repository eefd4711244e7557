"""The ``demo`` command: one photograph, one seen and one unseen kernel, every method.

It degrades a bundled test photograph (Eq. 1) with a seen and an unseen kernel, restores
the LR images with bicubic and, when their checkpoints are found, the single network and the
mixture, and writes ``demo_x{u}.png`` (a figure) and ``demo_x{u}.json`` (the table).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from . import kernels as kernel_lib
from .checkpoints import _atomic_write  # temporary file, usual permissions, rename
from .degradations import bicubic_upsample, degrade, modcrop
from .metrics import psnr_y, ssim_y

# One kernel from each group: a strongly anisotropic seen kernel and an unseen one with no
# twin among the seen kernels.
DEMO_SEEN_INDEX = kernel_lib.SEEN_INDICES[10]
DEMO_UNSEEN_INDEX = kernel_lib.kernel_indices("unseen_clean")[1]


def _load(image: str) -> tuple[str, np.ndarray]:
    from .data import (
        BUNDLED_TEST,
        BUNDLED_TRAIN,
        DataError,
        bundled_images,
        load_image_y,
    )
    if image in BUNDLED_TEST or image in BUNDLED_TRAIN:
        split = "test" if image in BUNDLED_TEST else "train"
        return image, bundled_images(split)[image]
    if not Path(image).exists():
        raise DataError(f"image {image!r} is neither a bundled photograph ({', '.join(BUNDLED_TEST + BUNDLED_TRAIN)}) "
                        "nor an existing image file")
    return Path(image).stem, load_image_y(image)


def _models(checkpoint_dir: Path | None, scale: int) -> dict[str, torch.nn.Module]:
    if checkpoint_dir is None:
        return {}
    from .checkpoints import load_checkpoint
    found = {}
    for label, kind in (("single network", "single"), ("mixture (ours)", "mixture")):
        path = Path(checkpoint_dir) / f"x{scale}_{kind}.pt"
        if path.is_file():
            found[label] = load_checkpoint(path, expected_kind=kind, scale=scale)[0]
    return found


@torch.no_grad()
def _restore(model: torch.nn.Module, lr: np.ndarray, scale: int) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(lr, dtype=np.float32))[None, None]
    out = model(x, bicubic_upsample(x, scale))
    if isinstance(out, dict):
        out = out["fused"]
    return out[0, 0].double().numpy()


def run_demo(image: str = "chelsea", scale: int = 2, out_dir: Path = Path("demo_output"),
             checkpoint_dir: Path | None = None) -> dict:
    """Run the demo; returns ``{'rows': [...], 'table': str, 'figure': path, 'json': path}``."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    name, hr = _load(image)
    hr = modcrop(hr, scale)
    params = kernel_lib.bank_parameters()
    bank = kernel_lib.kernel_bank()
    methods = {"bicubic": None, **_models(checkpoint_dir, scale)}
    rows, panels = [], []
    for group, index in (("seen", DEMO_SEEN_INDEX), ("unseen", DEMO_UNSEEN_INDEX)):
        lr = degrade(hr, bank[index], scale)
        outputs = {}
        for label, model in methods.items():
            sr = bicubic_upsample(lr, scale) if model is None else _restore(model, lr, scale)
            outputs[label] = sr
            rows.append({"kernel_group": group, "kernel": params[index].label(), "method": label,
                         "psnr": round(float(psnr_y(hr, sr, scale)), 2),
                         "ssim": round(float(ssim_y(hr, sr, scale)), 4)})
        panels.append((group, index, lr, outputs))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_cols = 3 + len(methods)
    fig, axes = plt.subplots(2, n_cols, figsize=(2.6 * n_cols, 6.4), squeeze=False)
    crop = (slice(hr.shape[0] // 4, hr.shape[0] // 4 + 96), slice(hr.shape[1] // 3, hr.shape[1] // 3 + 96))
    for row, (group, index, lr, outputs) in enumerate(panels):
        ax = axes[row]
        ax[0].imshow(bank[index], cmap="viridis")
        ax[0].set_title(f"{group} kernel\n{params[index].label()}", fontsize=8)
        ax[1].imshow(np.kron(lr, np.ones((scale, scale)))[crop], cmap="gray", vmin=0, vmax=1,
                     interpolation="nearest")
        ax[1].set_title(f"LR (×{scale}, nearest)", fontsize=8)
        ax[2].imshow(hr[crop], cmap="gray", vmin=0, vmax=1)
        ax[2].set_title("HR ground truth", fontsize=8)
        for col, (label, sr) in enumerate(outputs.items(), start=3):
            ax[col].imshow(np.clip(sr, 0, 1)[crop], cmap="gray", vmin=0, vmax=1)
            ax[col].set_title(f"{label}\n{psnr_y(hr, sr, scale):.2f} dB", fontsize=8)
        for a in ax:
            a.set_xticks([])
            a.set_yticks([])
    fig.suptitle(f"'{name}' ×{scale}: 96×96 HR crops (Y channel)", fontsize=10)
    fig.tight_layout()
    figure_path = out_dir / f"demo_x{scale}.png"
    _atomic_write(figure_path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)

    json_path = out_dir / f"demo_x{scale}.json"
    payload = {"image": name, "scale": scale, "rows": rows}
    _atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2)))
    header = f"{'kernels':8s} {'kernel':26s} {'method':16s} {'PSNR':>7s} {'SSIM':>7s}"
    lines = [header, "-" * len(header)]
    lines += [f"{r['kernel_group']:8s} {r['kernel']:26s} {r['method']:16s} {r['psnr']:7.2f} "
              f"{r['ssim']:7.4f}" for r in rows]
    return {"rows": rows, "table": "\n".join(lines), "figure": str(figure_path),
            "json": str(json_path)}

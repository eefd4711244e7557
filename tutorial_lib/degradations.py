"""The degradation model of Eq. (1), L = (H ⊗ k)↓u (+ n), exactly as the authors' code.

Steps (checked against the reference implementations in the tests):

1. ``modcrop``: crop the HR image to a multiple of the scale ``u``.
2. ``blur``: correlation with the kernel, boundary mode ``'reflect'`` of SciPy (the edge
   pixel is repeated: ``d c b a | a b c d``), i.e. ``scipy.ndimage.correlate``.
3. ``downsample``: keep HR pixel ``u·i + u//2`` in each direction (what PIL's ``NEAREST``
   resize does): indices 1, 3, 5 … at ×2; 1, 4, 7 … at ×3; 2, 6, 10 … at ×4.
4. optional Gaussian noise of standard deviation ``noise_sigma`` (in [0, 1] units).
5. The LR image stays float (no 8-bit rounding).

:func:`bicubic_upsample` is PIL's bicubic (a = −0.5), which is what the experts add their
residual to. Torch's ``interpolate(mode='bicubic')`` equals it only with ``antialias=True``.

Two implementations live side by side: NumPy/SciPy for one image (the reference), and
PyTorch for batches (a different kernel per image, on whatever device the batch is on).
:class:`PatchSampler` draws training pairs that are exactly crops of the whole-image
degradation (a one-pixel slip here makes trained networks worse than bicubic).
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F

from .config import check_integer

SCALES = (2, 3, 4)


# ----------------------------------------------------------------------------- validation
def _check_scale(scale: int) -> int:
    return check_integer("scale", scale)


_RANGE_SLACK = 1e-3  # float round-off of an image in [0, 1], far below one 8-bit level (1/255)


def _check_image(img: np.ndarray, name: str = "image", check_range: bool = True) -> np.ndarray:
    """``img`` as float64 (H, W), or a clear error: not 2-D (a colour image gets a hint), not
    float, NaN or inf, or (with ``check_range``) values far outside [0, 1] (8-bit levels
    stored as floats)."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        raise ValueError(f"{name} has shape {img.shape}: expected a 2-D Y image (H, W), one channel; "
                         "convert a colour image with tutorial_lib.metrics.rgb_to_y")
    if img.ndim != 2:
        raise ValueError(f"{name} must be a single-channel 2-D array (H, W), got shape {img.shape}")
    if not np.issubdtype(img.dtype, np.floating):
        raise ValueError(f"{name} must be float in [0, 1], got dtype {img.dtype} "
                         "(convert 8-bit images with img / 255)")
    if not np.isfinite(img).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if check_range and img.size and (img.max() > 1.0 + _RANGE_SLACK or img.min() < -_RANGE_SLACK):
        raise ValueError(f"{name} must be float in [0, 1], got values in [{img.min():g}, {img.max():g}]"
                         + (" (8-bit levels? divide by 255)" if img.max() > 2.0 else ""))
    return img.astype(np.float64, copy=False)


def _check_kernel(kernel: np.ndarray) -> np.ndarray:
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ValueError(f"kernel must be 2-D with odd sides, got shape {kernel.shape}")
    return kernel


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop (H, W) to (H - H % u, W - W % u), as the paper's evaluation code."""
    scale = _check_scale(scale)
    img = np.asarray(img)
    if img.ndim < 2:
        raise ValueError(f"image must be at least 2-D, got shape {img.shape}")
    height, width = img.shape[:2]
    if height < scale or width < scale:
        raise ValueError(f"image of size {height}x{width} is smaller than the scale {scale}")
    return img[: height - height % scale, : width - width % scale]


def centre_crop(img: np.ndarray, side: int, multiple: int = 1) -> np.ndarray:
    """The central ``side x side`` crop of (H, W, ...) ``img`` (a view). ``side`` is rounded
    down to a multiple of ``multiple`` and so are the crop's top and left, so that a crop of an
    HR image stays on the LR grid of scale ``multiple``; an image smaller than ``side`` along an
    axis keeps that axis whole."""
    side, multiple = check_integer("side", side), check_integer("multiple", multiple)
    img = np.asarray(img)
    if img.ndim < 2:
        raise ValueError(f"image must be at least 2-D, got shape {img.shape}")
    side -= side % multiple
    if side < 1:
        raise ValueError(f"side must be at least multiple = {multiple}")
    top, left = max((img.shape[0] - side) // 2, 0), max((img.shape[1] - side) // 2, 0)
    top, left = top - top % multiple, left - left % multiple
    return img[top:top + side, left:left + side]


# ------------------------------------------------------------------- one image, NumPy/SciPy
def blur(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate (H, W) with a kernel, SciPy boundary mode 'reflect'. Float64 (H, W)."""
    img, kernel = _check_image(img), _check_kernel(kernel)
    if img.shape[0] < kernel.shape[0] // 2 + 1 or img.shape[1] < kernel.shape[1] // 2 + 1:
        raise ValueError(f"image of size {img.shape[0]}x{img.shape[1]} is smaller than "
                         f"the kernel's half-width ({kernel.shape[0]}x{kernel.shape[1]} kernel)")
    return scipy.ndimage.correlate(img, kernel, mode="reflect")


def downsample(img: np.ndarray, scale: int) -> np.ndarray:
    """Keep pixel ``u·i + u//2`` of each row and column: (H, W) -> (H // u, W // u).

    H and W must be multiples of ``u`` (apply :func:`modcrop` first).
    """
    scale = _check_scale(scale)
    img = np.asarray(img)
    if img.shape[0] % scale or img.shape[1] % scale:
        raise ValueError(f"image size {img.shape[0]}x{img.shape[1]} is not a multiple of the "
                         f"scale {scale}; apply modcrop first")
    return img[scale // 2::scale, scale // 2::scale]


def add_noise(img: np.ndarray, sigma: float, rng: np.random.Generator | int | None = None
              ) -> np.ndarray:
    """Add white Gaussian noise of standard deviation ``sigma`` (same units as ``img``)."""
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return np.array(img, dtype=np.float64)
    rng = np.random.default_rng(rng)
    return img + sigma * rng.standard_normal(np.shape(img))


def degrade(hr: np.ndarray | torch.Tensor, kernel: np.ndarray | torch.Tensor, scale: int,
            noise_sigma: float = 0.0, rng: np.random.Generator | int | None = None
            ) -> np.ndarray | torch.Tensor:
    """Eq. (1): modcrop, blur, downsample (+ noise).

    - NumPy: ``hr`` (H, W) float in [0, 1] and ``kernel`` (k, k) -> LR (H//u, W//u) float64.
    - Torch: ``hr`` (B, 1, H, W) and ``kernel`` (k, k) or (B, k, k), one kernel per image ->
      LR (B, 1, H//u, W//u) on ``hr``'s device. Noise then uses torch's global generator,
      or ``rng``: a ``torch.Generator`` or an integer seed.
    """
    if isinstance(hr, torch.Tensor):
        if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
            rng = torch.Generator(device=hr.device).manual_seed(int(rng))
        elif rng is not None and not isinstance(rng, torch.Generator):
            raise TypeError(f"for a torch hr, rng must be a torch.Generator, an integer seed or None, "
                            f"got {type(rng).__name__}")
        return degrade_torch(hr, kernel, scale, noise_sigma=noise_sigma, generator=rng)
    if isinstance(rng, torch.Generator):
        raise TypeError("for a NumPy hr, rng must be a numpy.random.Generator, an integer seed or None, "
                        "got a torch.Generator")
    hr = modcrop(_check_image(hr, "hr"), scale)
    lr = downsample(blur(hr, kernel), scale)
    return add_noise(lr, noise_sigma, rng) if noise_sigma else lr


# --------------------------------------------------------------------- batches, PyTorch
def symmetric_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad (..., H, W) by ``pad`` on each side repeating the edge (SciPy 'reflect',
    NumPy 'symmetric'): ``d c b a | a b c d | d c b a``. Needs ``pad <= min(H, W)``."""
    if pad == 0:
        return x
    height, width = x.shape[-2:]
    if pad > min(height, width):
        raise ValueError(f"cannot pad a {height}x{width} image by {pad} (the kernel is too "
                         "large for the image)")
    x = torch.cat([x[..., :pad, :].flip(-2), x, x[..., -pad:, :].flip(-2)], dim=-2)
    return torch.cat([x[..., :, :pad].flip(-1), x, x[..., :, -pad:].flip(-1)], dim=-1)


def _as_kernel_batch(kernel: np.ndarray | torch.Tensor, batch: int, like: torch.Tensor
                     ) -> torch.Tensor:
    kernel = torch.as_tensor(kernel, dtype=like.dtype, device=like.device)
    if kernel.ndim == 2:
        kernel = kernel.expand(batch, *kernel.shape)
    if kernel.ndim != 3 or kernel.shape[0] != batch:
        raise ValueError(f"kernel must be (k, k) or ({batch}, k, k), got {tuple(kernel.shape)}")
    if kernel.shape[-1] % 2 == 0 or kernel.shape[-2] % 2 == 0:
        raise ValueError(f"kernel sides must be odd, got {tuple(kernel.shape[-2:])}")
    return kernel


def blur_torch(x: torch.Tensor, kernel: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Correlate each image of (B, 1, H, W) with its own kernel ((k, k) or (B, k, k)),
    boundary 'reflect' as SciPy. One grouped convolution for the whole batch."""
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected a batch (B, 1, H, W), got shape {tuple(x.shape)}")
    batch = x.shape[0]
    kernel = _as_kernel_batch(kernel, batch, x)
    pad_h, pad_w = kernel.shape[-2] // 2, kernel.shape[-1] // 2
    padded = symmetric_pad(x, max(pad_h, pad_w))
    if pad_h != pad_w:  # crop the extra padding of the shorter side
        extra_h, extra_w = max(pad_h, pad_w) - pad_h, max(pad_h, pad_w) - pad_w
        padded = padded[..., extra_h: padded.shape[-2] - extra_h, extra_w: padded.shape[-1] - extra_w]
    out = F.conv2d(padded.reshape(1, batch, *padded.shape[-2:]), kernel[:, None], groups=batch)
    return out.reshape(batch, 1, *out.shape[-2:])


def downsample_torch(x: torch.Tensor, scale: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H//u, W//u) keeping pixel ``u·i + u//2`` (H, W multiples of u)."""
    scale = _check_scale(scale)
    if x.shape[-2] % scale or x.shape[-1] % scale:
        raise ValueError(f"image size {x.shape[-2]}x{x.shape[-1]} is not a multiple of the "
                         f"scale {scale}; modcrop first")
    return x[..., scale // 2::scale, scale // 2::scale]


def blur_downsample_torch(x: torch.Tensor, kernel: np.ndarray | torch.Tensor, scale: int
                          ) -> torch.Tensor:
    """``downsample_torch(blur_torch(x, kernel), scale)`` computed only where it is kept:
    one strided convolution starting at pixel ``u//2`` (``u²`` times less work).

    ``x`` (B, 1, H, W) with H, W multiples of ``u``; ``kernel`` (k, k), (B, k, k), or
    (K, k, k) with B = 1 (one image, K kernels: output (K, 1, H//u, W//u)).
    """
    scale = _check_scale(scale)
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected a batch (B, 1, H, W), got shape {tuple(x.shape)}")
    if x.shape[-2] % scale or x.shape[-1] % scale:
        raise ValueError(f"image size {x.shape[-2]}x{x.shape[-1]} is not a multiple of the "
                         f"scale {scale}; modcrop first")
    kernel_t = torch.as_tensor(kernel, dtype=x.dtype, device=x.device)
    one_image_many_kernels = x.shape[0] == 1 and kernel_t.ndim == 3
    batch = kernel_t.shape[0] if one_image_many_kernels else x.shape[0]
    kernel_t = kernel_t if one_image_many_kernels else _as_kernel_batch(kernel_t, batch, x)
    if kernel_t.shape[-1] != kernel_t.shape[-2] or kernel_t.shape[-1] % 2 == 0:
        raise ValueError(f"kernels must be square with odd sides, got {tuple(kernel_t.shape)}")
    pad = kernel_t.shape[-1] // 2
    padded = symmetric_pad(x, pad)[..., scale // 2:, scale // 2:]
    if one_image_many_kernels:  # K output channels of one convolution
        out = F.conv2d(padded, kernel_t[:, None], stride=scale)
    else:  # one kernel per image: a grouped convolution
        out = F.conv2d(padded.reshape(1, batch, *padded.shape[-2:]), kernel_t[:, None],
                       stride=scale, groups=batch)
    return out.reshape(batch, 1, *out.shape[-2:])


def degrade_torch(hr: torch.Tensor, kernel: np.ndarray | torch.Tensor, scale: int,
                  noise_sigma: float = 0.0, generator: torch.Generator | None = None
                  ) -> torch.Tensor:
    """Batched Eq. (1): (B, 1, H, W) HR and (k, k) or (B, k, k) kernels -> (B, 1, H//u, W//u).

    HR images are modcropped; everything stays on ``hr``'s device and dtype. With B = 1 and
    (K, k, k) kernels, the one image is degraded by each kernel: (K, 1, H//u, W//u).
    """
    scale = _check_scale(scale)
    if hr.ndim != 4 or hr.shape[1] != 1:
        raise ValueError(f"hr must be a batch (B, 1, H, W), got shape {tuple(hr.shape)}")
    if not hr.is_floating_point():
        raise ValueError(f"hr must be a float tensor in [0, 1], got dtype {hr.dtype}")
    height, width = hr.shape[-2:]
    if height < scale or width < scale:
        raise ValueError(f"image of size {height}x{width} is smaller than the scale {scale}")
    hr = hr[..., : height - height % scale, : width - width % scale]
    lr = blur_downsample_torch(hr, kernel, scale)
    if noise_sigma:
        if noise_sigma < 0:
            raise ValueError(f"noise sigma must be >= 0, got {noise_sigma}")
        noise = torch.randn(lr.shape, generator=generator, device=lr.device, dtype=lr.dtype)
        lr = lr + noise_sigma * noise
    return lr


def degrade_with_kernels(hr: np.ndarray | torch.Tensor, kernels: np.ndarray | torch.Tensor,
                         scale: int, device: torch.device | str | None = None,
                         dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """One HR image (H, W) degraded by each of K kernels (K, k, k) at once -> (K, 1, h, w)."""
    hr_t = torch.as_tensor(np.asarray(hr) if not isinstance(hr, torch.Tensor) else hr,
                           dtype=dtype, device=device)
    if hr_t.ndim != 2:
        raise ValueError(f"hr must be one image (H, W), got shape {tuple(hr_t.shape)}")
    kernels_t = torch.as_tensor(kernels, dtype=dtype, device=hr_t.device)
    if kernels_t.ndim != 3:
        raise ValueError(f"kernels must be (K, k, k), got shape {tuple(kernels_t.shape)}")
    return degrade_torch(hr_t[None, None], kernels_t, scale)


def bicubic_upsample(lr: np.ndarray | torch.Tensor, scale: int) -> np.ndarray | torch.Tensor:
    """Bicubic upsampling by ``scale``, equal to PIL's ``Image.resize(..., BICUBIC)``.

    NumPy (h, w) -> (u·h, u·w) float64; torch (..., h, w) -> (..., u·h, u·w) same device/dtype.
    Any finite values are accepted, not only [0, 1]: a noisy LR image (Eq. 1 with noise) leaves
    [0, 1] near black and white, and the interpolation is linear in its input.
    """
    scale = _check_scale(scale)
    if isinstance(lr, torch.Tensor):
        shape = lr.shape
        if lr.ndim < 2:
            raise ValueError(f"lr must be at least 2-D, got shape {tuple(shape)}")
        x = lr.reshape(-1, 1, *shape[-2:])
        up = F.interpolate(x, size=(shape[-2] * scale, shape[-1] * scale), mode="bicubic",
                           align_corners=False, antialias=True)
        return up.reshape(*shape[:-2], *up.shape[-2:])
    lr = _check_image(lr, "lr", check_range=False)
    return bicubic_upsample(torch.from_numpy(np.ascontiguousarray(lr)), scale).numpy()


# ------------------------------------------------------------------------ patch sampling
_DIHEDRAL = 8  # 4 rotations x optional flip


def dihedral(x: np.ndarray | torch.Tensor, op: int) -> np.ndarray | torch.Tensor:
    """Apply one of the 8 rotations/flips to the last two axes. ``op`` in 0..7:
    bit 0 flips rows (upside down), bit 1 flips columns, bit 2 transposes (applied first)."""
    if not 0 <= op < _DIHEDRAL:
        raise ValueError(f"op must be in 0..7, got {op}")
    is_torch = isinstance(x, torch.Tensor)
    if op & 4:
        x = x.transpose(-1, -2) if is_torch else np.swapaxes(x, -1, -2)
    if op & 1:
        x = x.flip(-2) if is_torch else x[..., ::-1, :]
    if op & 2:
        x = x.flip(-1) if is_torch else x[..., :, ::-1]
    return x


class PatchSampler:
    """Random LR/HR training pairs, degraded on the fly, vectorised over the batch.

    Each pair is drawn as: an image (probability proportional to its number of patch
    positions), one of the 8 rotations/flips of the whole (modcropped) image, an LR patch
    position ``(i, j)`` on the LR grid, and a kernel. The HR target is the crop
    ``[u·i, u·i + u·p)`` of the augmented image and the LR input is the same crop of
    ``degrade(augmented image, kernel, u)`` — exactly, boundary included (tests check it).

    Args:
        images: list of HR images, float (H, W) in [0, 1]; each is modcropped to ``scale``.
        kernels: (K, k, k) kernels; each pair draws one uniformly (its index is returned).
        scale: the upscaling factor ``u``.
        lr_patch: LR patch side ``p`` (the HR patch side is ``u·p``).
        augment: draw rotations/flips (else always the identity).
        noise_sigma: standard deviation of Gaussian noise added to LR patches.
        device: where images live and patches are made (a GPU samples without a CPU loader).
        seed: seed of the sampler's own generator (runs repeat exactly on the CPU).
        blur: how the blur is computed at the kept pixels: ``'conv'`` (a depthwise strided
            convolution, the default on the CPU), ``'matmul'`` (a batched matrix product over
            strided views, the default on a GPU, where it stays in full float32 while cuDNN
            convolutions may use TF32) or ``'auto'``. Both give the same patches to float
            rounding.
    """

    def __init__(self, images: list[np.ndarray], kernels: np.ndarray, scale: int,
                 lr_patch: int = 24, augment: bool = True, noise_sigma: float = 0.0,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 seed: int = 0, blur: str = "auto") -> None:
        self.scale = _check_scale(scale)
        if blur not in ("auto", "conv", "matmul"):
            raise ValueError(f"blur must be 'auto', 'conv' or 'matmul', got {blur!r}")
        if lr_patch < 1:
            raise ValueError(f"lr_patch must be >= 1, got {lr_patch}")
        if len(images) == 0:
            raise ValueError("PatchSampler needs at least one training image")
        self.lr_patch, self.augment, self.noise_sigma = int(lr_patch), augment, noise_sigma
        self.device, self.dtype = torch.device(device), dtype
        self.blur = ("conv" if self.device.type == "cpu" else "matmul") if blur == "auto" else blur
        kernels = np.asarray(kernels, dtype=np.float64)
        if kernels.ndim != 3 or kernels.shape[1] % 2 == 0 or kernels.shape[1] != kernels.shape[2]:
            raise ValueError(f"kernels must be (K, k, k) with odd k, got {kernels.shape}")
        self.kernels = torch.as_tensor(kernels, dtype=dtype, device=self.device)
        self.pad = kernels.shape[1] // 2
        hr_side = self.scale * self.lr_patch
        self.window = hr_side + 2 * self.pad

        # Pack every symmetric-padded image into one flat buffer (images differ in size).
        flats, offsets, heights, widths = [], [], [], []
        offset = 0
        for n, img in enumerate(images):
            img = modcrop(_check_image(img, f"images[{n}]"), self.scale)
            if min(img.shape) < hr_side:
                raise ValueError(f"images[{n}] of size {img.shape[0]}x{img.shape[1]} is smaller "
                                 f"than one HR patch ({hr_side}x{hr_side})")
            if min(img.shape) < self.pad:
                raise ValueError(f"images[{n}] is smaller than the kernel's half-width")
            padded = symmetric_pad(torch.as_tensor(img), self.pad)
            flats.append(padded.reshape(-1))
            offsets.append(offset)
            heights.append(img.shape[0])
            widths.append(img.shape[1])
            offset += padded.numel()
        self.buffer = torch.cat(flats).to(device=self.device, dtype=dtype)
        self.offsets = torch.tensor(offsets, device=self.device)
        self.heights = torch.tensor(heights, device=self.device)
        self.widths = torch.tensor(widths, device=self.device)
        positions = ((self.heights // self.scale - self.lr_patch + 1)
                     * (self.widths // self.scale - self.lr_patch + 1)).double()
        self.image_weights = positions / positions.sum()
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._local = torch.arange(self.window, device=self.device)

    @property
    def n_kernels(self) -> int:
        return int(self.kernels.shape[0])

    def sample(self, batch_size: int, kernel_index: torch.Tensor | None = None
               ) -> dict[str, torch.Tensor]:
        """Draw ``batch_size`` pairs.

        Returns a dict with ``lr`` (B, 1, p, p), ``hr`` (B, 1, u·p, u·p), ``kernel_index`` (B,)
        and, to reproduce a pair, ``image_index``, ``op`` (see :func:`dihedral`) and ``row``,
        ``col`` (the LR position in the augmented image).
        """
        gen, dev = self.generator, self.device
        image_index = torch.multinomial(self.image_weights, batch_size, replacement=True,
                                        generator=gen)
        if kernel_index is None:
            kernel_index = torch.randint(self.n_kernels, (batch_size,), generator=gen, device=dev)
        op = (torch.randint(_DIHEDRAL, (batch_size,), generator=gen, device=dev)
              if self.augment else torch.zeros(batch_size, dtype=torch.long, device=dev))
        transpose = (op & 4) > 0
        height, width = self.heights[image_index], self.widths[image_index]
        aug_h = torch.where(transpose, width, height)  # size of the augmented image
        aug_w = torch.where(transpose, height, width)
        rand = torch.rand((2, batch_size), generator=gen, device=dev, dtype=torch.float64)
        row = (rand[0] * (aug_h // self.scale - self.lr_patch + 1)).long()
        col = (rand[1] * (aug_w // self.scale - self.lr_patch + 1)).long()
        windows = self._gather_windows(image_index, op, row, col, height, width)
        # blur + downsample, computed only at the kept pixels: every LR pixel is the dot
        # product of its k x k HR neighbourhood with its patch's kernel
        offset, size = self.scale // 2, self.kernels.shape[-1]
        weights = self.kernels[kernel_index]
        if self.blur == "conv":
            # one depthwise convolution with stride u, a group per patch: on the CPU this is
            # 5-70x faster than the matmul below, which copies k*k values per LR pixel
            lr = F.conv2d(windows[None, :, offset:, offset:], weights[:, None], stride=self.scale,
                          groups=batch_size)
            lr = lr[0, :, :self.lr_patch, :self.lr_patch].unsqueeze(1)
        else:
            # a batched matmul over strided views, in full float32 (cuDNN convolutions may
            # use TF32 on a GPU)
            taps = windows[:, offset:, offset:].unfold(1, size, self.scale).unfold(2, size, self.scale)
            taps = taps[:, :self.lr_patch, :self.lr_patch].reshape(batch_size, -1, size * size)
            lr = torch.bmm(taps, weights.reshape(batch_size, size * size, 1))
            lr = lr.reshape(batch_size, 1, self.lr_patch, self.lr_patch)
        hr = windows[:, None, self.pad:self.window - self.pad, self.pad:self.window - self.pad]
        if self.noise_sigma:
            lr = lr + self.noise_sigma * torch.randn(lr.shape, generator=gen, device=dev,
                                                     dtype=lr.dtype)
        return {"lr": lr.contiguous(), "hr": hr.contiguous(), "kernel_index": kernel_index,
                "image_index": image_index, "op": op, "row": row, "col": col}

    def _gather_windows(self, image_index, op, row, col, height, width) -> torch.Tensor:
        """Padded HR windows (B, window, window) of the augmented images, by index arithmetic.

        A window in (padded) augmented coordinates starts at ``(u·row, u·col)``. Undoing the
        flips and the transpose maps its local pixel ``(i, j)`` to a pixel of the padded
        original that is affine in ``(i, j)``, so each window is ``base + ci·i + cj·j`` in the
        flat buffer: three numbers per patch, one broadcast add for the whole batch.
        """
        transpose, flip_rows, flip_cols = (op & 4) > 0, (op & 1) > 0, (op & 2) > 0
        pad2 = 2 * self.pad
        padded_w = width + pad2
        aug_h = torch.where(transpose, width, height) + pad2  # padded augmented size
        aug_w = torch.where(transpose, height, width) + pad2
        a0, b0 = self.scale * row, self.scale * col
        a0 = torch.where(flip_rows, aug_h - 1 - a0, a0)
        b0 = torch.where(flip_cols, aug_w - 1 - b0, b0)
        step_a = 1 - 2 * flip_rows.long()
        step_b = 1 - 2 * flip_cols.long()
        offsets = self.offsets[image_index]
        base = torch.where(transpose, offsets + b0 * padded_w + a0, offsets + a0 * padded_w + b0)
        ci = torch.where(transpose, step_a, step_a * padded_w)
        cj = torch.where(transpose, step_b * padded_w, step_b)
        flat = (base[:, None, None] + ci[:, None, None] * self._local[None, :, None]
                + cj[:, None, None] * self._local[None, None, :])
        return self.buffer[flat]

"""tutorial_lib: the tested code behind the notebooks on blind super-resolution with a
mixture of deep networks (Wang et al., Pattern Recognition 2020).

Modules follow the notebook sequence:

- :mod:`tutorial_lib.kernels`       the 58 anisotropic Gaussian blur kernels and their split
- :mod:`tutorial_lib.degradations`  blur, downsample, noise, bicubic, training patch sampler
- :mod:`tutorial_lib.metrics`       Y channel, PSNR and SSIM as the paper's evaluation code
- :mod:`tutorial_lib.linear_sr`     a least-squares linear restorer (notebook 02's experiments)
- :mod:`tutorial_lib.data`          offline bundled images and the benchmark downloads
- :mod:`tutorial_lib.elbo`          the ELBO of a discrete latent-variable model, and a 1-D toy
- :mod:`tutorial_lib.models`        E-Net, the expert network and the batched mixture
- :mod:`tutorial_lib.objectives`    Eq. (11) and Eq. (12) and the ablation objectives
- :mod:`tutorial_lib.training`      budgets, training loops and checkpoints
- :mod:`tutorial_lib.evaluation`    the paper's evaluation protocol over images x kernels

Conventions used everywhere: images are float arrays in [0, 1] holding the Y channel
(BT.601, so colour photographs give values in [16/255, 235/255]; gray images are taken as
Y unchanged and may use all of [0, 1]); a single image is (H, W),
a batch is (B, 1, H, W).
"""

import os as _os

# CPU memory settings, made once when the package is imported (each can be turned off):
# - THP_MEM_ALLOC_ENABLE=1 asks PyTorch to back CPU tensors of 2 MiB and more with transparent
#   huge pages (Linux; read at PyTorch's first allocation, so it takes effect when tutorial_lib
#   is imported before any tensor exists). Whole-image evaluation works on tensors of hundreds
#   of MB and spends much of its time faulting fresh pages in: the x2 paper-size mixture
#   evaluated Set5's unseen kernels in 97 s instead of 144 s on 2 cores. Set
#   THP_MEM_ALLOC_ENABLE=0 beforehand to keep PyTorch's default.
# - config.tune_cpu_allocator() keeps freed training-sized tensors in the process (glibc);
#   without it, huge pages made a training step of the batched mixture slower, not faster.
#   TUTORIAL_CPU_ALLOCATOR=default turns it off.
_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from .config import check_numpy_bridge as _check_numpy_bridge
from .config import tune_cpu_allocator as _tune_cpu_allocator

_check_numpy_bridge()  # a clear error for an old PyTorch beside NumPy 2
_tune_cpu_allocator()

__version__ = "0.1.0"

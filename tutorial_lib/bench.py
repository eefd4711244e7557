"""How fast does the mixture train and run on this machine?

:func:`run_benchmark` measures, for the current device:

1. **Training throughput** (LR patches per second, forward + backward of a squared-error
   loss, no optimiser step) of the ``M`` experts as one batched network
   (:class:`~tutorial_lib.models.MixtureOfExperts`, grouped convolutions) and as a Python
   loop over ``M`` separate experts (:class:`~tutorial_lib.models.LoopMixture`), with the
   same weights. The two are measured *interleaved* — one step of each in turn, after a
   warm-up step of each — so that load from other processes slows both alike, and their
   ratio is reported.
2. **Inference time** of the full model (E-Net + batched mixture, Eq. 10) on one
   Set5-sized image: a ``256 x 256`` LR input to a ``512 x 512`` output at x2 (median of a
   few runs after a warm-up).
3. **Peak memory**: ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU the peak
   resident set size of the whole process (``resource.getrusage``), which includes
   everything the process allocated before.

On a GPU both variants run under bfloat16 autocast with channels-last tensors (``layout``
chooses), and every timing is bracketed by ``torch.cuda.synchronize``. Two optional extras
on a GPU: ``compile=True`` times the batched mixture wrapped in ``torch.compile``, and
``cuda_graph=True`` times both variants with forward and backward captured once in a CUDA
graph and replayed (no Python and no kernel-launch cost per step: what is left is the GPU's
own work, so the ratio then compares the arithmetic of one grouped pass against ``M`` small
ones); ``compile_mode`` passes a mode to ``torch.compile`` (``'reduce-overhead'`` replays
Inductor's kernels as CUDA graphs). On any device, ``profile_steps`` runs PyTorch's profiler
over a few more training steps of each variant and reports the operators (CPU) or GPU kernels
that take the time, and how many operators and kernels one step dispatches. On the CPU the allocator setting of
:func:`tutorial_lib.config.tune_cpu_allocator` applies, as in CPU training (``cpu_allocator``
in the result says whether it did). Defaults keep a CPU run to about 40
seconds: paper-size experts (64 channels, 7 blocks), batch 16, ``seconds = 15`` of timed
steps per variant. ``python -m tutorial_lib bench --json`` prints the result.

What to expect (see the module doc of :mod:`tutorial_lib.training`): on two CPU cores the
paper-size mixture trains only some tens of patches per second, which is why the ``cpu``
budget uses narrower, shallower experts. On a GPU one grouped pass replaces ``M`` small
launches. On the CPU launches cost little and what counts is whether an operation's tensors
fit in the cache: the loop works on ``M`` times smaller tensors than the grouped pass (a
16 x 64 x 24 x 24 float32 activation is 2.4 MB, more than one core's L2 cache (1 MB) on the
machine measured; the grouped one is 9.4 MB), so the two run at about the same speed there, the loop
slightly ahead at batch 16 and the batched pass ahead at batches of 2-4 (the README's
*Speed* section and :func:`tutorial_lib.config.tune_cpu_allocator` give the numbers).
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from typing import Any

import torch

from .config import device_name, get_device, tune_cpu_allocator
from .models import BlindSR, ENet, LoopMixture, MixtureOfExperts, count_parameters

__all__ = ["COMPILE_MODES", "format_report", "run_benchmark"]

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    try:
        import resource

        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        if platform.system() == "Darwin":  # bytes on macOS
            peak_kb /= 1024
        return peak_kb / 1024, "process peak RSS (resource.getrusage)"
    except ImportError:  # Windows
        return float("nan"), "unavailable"


def run_benchmark(
    device: str | torch.device | None = None,
    M: int = 4,
    scale: int = 2,
    lr_patch: int = 24,
    batch_size: int | None = None,
    seconds: float | None = None,
    channels: int = 64,
    n_blocks: int = 7,
    image_side: int = 256,
    inference_runs: int | None = None,
    seed: int = 0,
    compile: bool = False,
    cuda_graph: bool = False,
    layout: str | None = None,
    compile_mode: str = "default",
    profile_steps: int = 0,
) -> dict[str, Any]:
    """Training throughput (batched vs. loop), inference time and peak memory; see module doc.

    Args:
        device: ``'cpu'``, ``'cuda'`` or ``None`` (CUDA when available).
        M, scale, lr_patch: mixture size, upscaling factor, LR patch side of the training batch.
        batch_size: patches per step (default 16 on the CPU, 256 on a GPU).
        seconds: timed seconds per variant for the throughput (default 15 on the CPU, 10 on a
            GPU); the run stops once both variants have this many seconds and at least 2
            steps, or as soon as one of them reaches 4 x ``seconds`` (a far slower variant
            does not stretch the run).
        channels, n_blocks: expert width and depth (64, 7: the paper's experts).
        image_side: side of the LR image for the inference timing (256 -> 512 at x2).
        inference_runs: timed inference runs after one warm-up (default 3 on the CPU, 20 on
            a GPU); the median is reported.
        compile: also time the batched mixture wrapped in ``torch.compile`` (CUDA only; the
            compilation itself is excluded and reported as ``compile_s``).
        compile_mode: the ``mode`` of ``torch.compile``: ``'default'``, ``'reduce-overhead'``
            (Inductor's kernels replayed as CUDA graphs), ``'max-autotune'`` or
            ``'max-autotune-no-cudagraphs'`` (reported as ``compile_mode``).
        cuda_graph: also time both variants as CUDA graphs of forward + backward (CUDA only;
            ``graph_batched_patches_per_s``, ``graph_loop_patches_per_s``,
            ``graph_batched_over_loop``; a capture that fails is reported as ``graph_error``
            and the rest of the result stands).
        layout: ``'channels_last'`` or ``'contiguous'`` memory format of activations and
            weights (default: channels-last on CUDA, contiguous on the CPU).
        profile_steps: when positive, also run PyTorch's profiler over this many training
            steps of each variant (after the timing, so it does not slow the timed steps) and
            report where the time goes: ``profile`` = ``{"batched": ..., "loop": ...}``, each
            from :func:`_profile_steps`.

    Returns:
        dict with ``device``, ``device_name``, ``torch_version``, ``threads``, the settings
        (``M``, ``scale``, ``lr_patch``, ``batch_size``, ``channels``, ``n_blocks``,
        ``precision``), ``cpu_allocator`` (CPU only: :func:`~tutorial_lib.config.tune_cpu_allocator`'s
        ``reason``), ``parameters`` (of the mixture), ``batched_patches_per_s``,
        ``loop_patches_per_s``, ``batched_over_loop`` (their ratio), ``batched_steps``,
        ``loop_steps``, with ``compile=True`` also ``compile_s`` and
        ``compiled_patches_per_s`` and ``compile_mode``, with ``cuda_graph=True`` the
        ``graph_*`` keys above, with ``profile_steps`` the ``profile`` key above,
        ``inference_ms`` (per image), ``inference_lr_size``,
        ``inference_hr_size``, ``peak_memory_mb``, ``peak_memory_kind`` and
        ``wall_time_s``.
    """
    device = get_device(device)
    cuda = device.type == "cuda"
    batch_size = (256 if cuda else 16) if batch_size is None else batch_size
    inference_runs = (20 if cuda else 3) if inference_runs is None else inference_runs
    if inference_runs < 1:
        raise ValueError(f"inference_runs must be >= 1, got {inference_runs}")
    if (compile or cuda_graph) and not cuda:
        raise ValueError("compile=True and cuda_graph=True are measured on CUDA only")
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {compile_mode!r}")
    if profile_steps < 0:
        raise ValueError(f"profile_steps must be >= 0, got {profile_steps}")
    layout = layout or ("channels_last" if cuda else "contiguous")
    if layout not in ("channels_last", "contiguous"):
        raise ValueError(f"layout must be 'channels_last' or 'contiguous', got {layout!r}")
    seconds = (10.0 if cuda else 15.0) if seconds is None else float(seconds)
    if not math.isfinite(seconds) or seconds <= 0 or batch_size < 1:
        raise ValueError(f"seconds must be a positive finite number and batch_size a positive integer, "
                         f"got {seconds} and {batch_size}")
    allocator = "" if cuda else tune_cpu_allocator()["reason"]  # as CPU training does
    start = time.perf_counter()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        torch.backends.cudnn.benchmark = True  # as training does: pick the fastest kernels
    torch.manual_seed(seed)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    runner_graphed: torch.nn.Module | None = None  # the compiled runner, when its mode uses CUDA graphs

    def autocast(cache_enabled: bool = True):
        # a CUDA graph capture needs the autocast weight cache off
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda, cache_enabled=cache_enabled)

    batched = MixtureOfExperts(M, scale, channels=channels, n_blocks=n_blocks)
    loop = LoopMixture.from_experts(batched.to_experts())  # the same weights
    batched.to(device, memory_format=memory_format)
    loop.to(device, memory_format=memory_format)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    lr = torch.rand(batch_size, 1, lr_patch, lr_patch, generator=generator).to(device, memory_format=memory_format)
    hr = torch.rand(batch_size, 1, scale * lr_patch, scale * lr_patch, generator=generator).to(device)
    q = torch.full((batch_size, M), 1.0 / M, device=device)

    def train_step(net: torch.nn.Module) -> float:
        _sync(device)
        t0 = time.perf_counter()
        if net is runner_graphed:  # Inductor's CUDA graphs: each call starts a new step
            torch.compiler.cudagraph_mark_step_begin()
        with autocast():
            fused = net(lr, q)["fused"]
        loss = (fused.float() - hr).square().mean()
        net.zero_grad(set_to_none=True)
        loss.backward()
        _sync(device)
        return time.perf_counter() - t0

    for net in (batched, loop):  # warm-up (allocations, cuDNN autotuning)
        train_step(net)
    times: dict[str, list[float]] = {"batched": [], "loop": []}
    while True:
        times["batched"].append(train_step(batched))
        times["loop"].append(train_step(loop))
        if min(sum(times["batched"]), sum(times["loop"])) >= seconds and len(times["loop"]) >= 2:
            break
        if max(sum(times["batched"]), sum(times["loop"])) >= 4 * seconds and len(times["loop"]) >= 2:
            break  # one variant is far slower: do not let it stretch the run
    batched_rate = batch_size * len(times["batched"]) / sum(times["batched"])
    loop_rate = batch_size * len(times["loop"]) / sum(times["loop"])
    parameters = count_parameters(batched)
    profiled: dict[str, Any] = {}
    if profile_steps:
        profiled["profile"] = {name: _profile_steps(train_step, net, profile_steps, device)
                               for name, net in (("batched", batched), ("loop", loop))}
    graphed: dict[str, Any] = {}
    if cuda_graph:
        graphed = _time_cuda_graphs(batched, loop, lr, hr, q, autocast, seconds, batch_size, device)
    del loop
    compiled: dict[str, Any] = {}
    if compile:
        runner = torch.compile(batched, mode=compile_mode)
        if compile_mode in ("reduce-overhead", "max-autotune"):
            runner_graphed = runner
        t0 = time.perf_counter()
        train_step(runner)  # compiles
        train_step(runner)
        compiled["compile_s"] = round(time.perf_counter() - t0, 2)
        steps = []
        while sum(steps) < seconds or len(steps) < 2:
            steps.append(train_step(runner))
        compiled["compiled_patches_per_s"] = round(batch_size * len(steps) / sum(steps), 2)
        compiled["compile_mode"] = compile_mode

    # inference: full model on one Set5-sized image
    model = BlindSR(ENet(M).to(device), batched).eval()
    image = torch.rand(1, 1, image_side, image_side, generator=generator).to(device, memory_format=memory_format)
    run_times = []
    with torch.no_grad():
        for i in range(inference_runs + 1):
            _sync(device)
            t0 = time.perf_counter()
            with autocast():
                out = model(image)["fused"]
            _sync(device)
            if i:  # the first run is a warm-up
                run_times.append(time.perf_counter() - t0)
    peak, peak_kind = _peak_memory_mb(device)
    return {
        "device": str(device),
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "M": M,
        "scale": scale,
        "lr_patch": lr_patch,
        "batch_size": batch_size,
        "channels": channels,
        "n_blocks": n_blocks,
        "precision": f"bfloat16 autocast, {layout}" if cuda else f"float32, {layout}",
        **({} if cuda else {"cpu_allocator": allocator}),
        "parameters": parameters,
        "batched_patches_per_s": round(batched_rate, 2),
        "loop_patches_per_s": round(loop_rate, 2),
        "batched_over_loop": round(batched_rate / loop_rate, 3),
        "batched_steps": len(times["batched"]),
        "loop_steps": len(times["loop"]),
        **compiled,
        **graphed,
        **profiled,
        "inference_ms": round(1000 * statistics.median(run_times), 2),
        "inference_lr_size": [image_side, image_side],
        "inference_hr_size": list(out.shape[-2:]),
        "peak_memory_mb": round(peak, 1),
        "peak_memory_kind": peak_kind,
        "wall_time_s": round(time.perf_counter() - start, 2),
    }


def _capture(net: torch.nn.Module, lr: torch.Tensor, hr: torch.Tensor, q: torch.Tensor, autocast,
             device: torch.device) -> torch.cuda.CUDAGraph:
    """Forward + backward of ``net`` captured in a CUDA graph (warm-up on a side stream first,
    as PyTorch's CUDA-graph notes do); ``replay()`` recomputes the loss and the gradients."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            net.zero_grad(set_to_none=True)
            with autocast(cache_enabled=False):
                fused = net(lr, q)["fused"]
            (fused.float() - hr).square().mean().backward()
    torch.cuda.current_stream(device).wait_stream(side)
    net.zero_grad(set_to_none=True)  # the capture allocates the gradients in the graph's pool
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        with autocast(cache_enabled=False):
            fused = net(lr, q)["fused"]
        (fused.float() - hr).square().mean().backward()
    return graph


def _time_cuda_graphs(batched: torch.nn.Module, loop: torch.nn.Module, lr: torch.Tensor, hr: torch.Tensor,
                      q: torch.Tensor, autocast, seconds: float, batch_size: int, device: torch.device
                      ) -> dict[str, Any]:
    """Both variants as CUDA graphs, replayed interleaved as the eager timing does."""
    try:
        graphs = {"batched": _capture(batched, lr, hr, q, autocast, device),
                  "loop": _capture(loop, lr, hr, q, autocast, device)}
    except Exception as error:  # noqa: BLE001 -- report it; the eager numbers stand on their own
        return {"graph_error": f"{type(error).__name__}: {error}"[:300]}
    times: dict[str, list[float]] = {"batched": [], "loop": []}
    for graph in graphs.values():  # warm-up replay
        graph.replay()
    while min(sum(times["batched"]), sum(times["loop"])) < seconds or len(times["loop"]) < 2:
        for name, graph in graphs.items():
            _sync(device)
            t0 = time.perf_counter()
            graph.replay()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    rates = {name: batch_size * len(t) / sum(t) for name, t in times.items()}
    for net in (batched, loop):
        net.zero_grad(set_to_none=True)  # let go of the graphs' gradient tensors
    del graphs
    return {"graph_batched_patches_per_s": round(rates["batched"], 2),
            "graph_loop_patches_per_s": round(rates["loop"], 2),
            "graph_batched_over_loop": round(rates["batched"] / rates["loop"], 3)}


def _profile_steps(train_step, net: torch.nn.Module, steps: int, device: torch.device,
                   top: int = 8) -> dict[str, Any]:
    """Where one training step of ``net`` spends its time, from ``torch.profiler`` over ``steps``.

    On the CPU the time is each operator's *self* CPU time (its children excluded, so the
    rows add up to the total). On CUDA it is the GPU time of each kernel, and
    ``kernels_per_step`` counts the kernels launched: a step of many small kernels waits for
    their launches rather than for the arithmetic.

    Returns:
        dict with ``steps``, ``total_ms_per_step``, ``top_level_ops_per_step`` (``aten``
        operators not called from inside another one, forward and backward: each is one
        dispatch from Python or the autograd engine), on CUDA ``kernels_per_step``, and ``top``: the
        ``top`` largest rows, each ``{"op", "ms_per_step", "calls_per_step", "share"}``.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    train_step(net)  # not profiled: the profiler's own start-up
    with profile(activities=activities) as prof:
        for _ in range(steps):
            train_step(net)
    if cuda:  # kernels only: a CPU operator's device time is its kernels' time again
        rows = [(e.key, e.self_device_time_total, e.count) for e in prof.key_averages()
                if e.device_type == DeviceType.CUDA]
    else:
        rows = [(e.key, e.self_cpu_time_total, e.count) for e in prof.key_averages()]
    total_us = sum(t for _, t, _ in rows)
    top_rows = sorted(rows, key=lambda row: row[1], reverse=True)[:top]
    top_level = sum(1 for e in prof.events()  # aten operators not called from inside another one
                    if e.device_type == DeviceType.CPU and e.key.startswith("aten::")
                    and (e.cpu_parent is None or not e.cpu_parent.key.startswith("aten::")))
    result: dict[str, Any] = {
        "steps": steps,
        "total_ms_per_step": round(total_us / 1000 / steps, 3),
        "top_level_ops_per_step": round(top_level / steps, 1),
    }
    if cuda:
        result["kernels_per_step"] = round(sum(count for _, _, count in rows) / steps, 1)
    result["top"] = [{"op": key, "ms_per_step": round(t / 1000 / steps, 3),
                      "calls_per_step": round(count / steps, 2), "share": round(t / total_us, 4) if total_us else 0.0}
                     for key, t, count in top_rows]
    return result


def format_report(result: dict[str, Any]) -> str:
    """A few human-readable lines for a :func:`run_benchmark` result."""
    lr_side, hr_size = result["inference_lr_size"], result["inference_hr_size"]
    allocator = f", allocator: {result['cpu_allocator']}" if result.get("cpu_allocator") else ""
    lines = [
        (f"device: {result['device']} ({result['device_name']}), torch {result['torch_version']}, "
         f"{result['threads']} threads, {result['precision']}{allocator}"),
        (f"mixture: M={result['M']} experts x{result['scale']}, {result['channels']} channels, "
         f"{result['n_blocks']} blocks, {result['parameters']:,} parameters"),
        (f"training, {result['lr_patch']}x{result['lr_patch']} LR patches, batch {result['batch_size']} "
         "(forward + backward):"),
        (f"  batched (grouped convs): {result['batched_patches_per_s']:.1f} patches/s "
         f"({result['batched_steps']} steps)"),
        f"  loop over experts:       {result['loop_patches_per_s']:.1f} patches/s ({result['loop_steps']} steps)",
        f"  batched / loop:          {result['batched_over_loop']:.2f}x",
        *([(f"  torch.compile'd batched: {result['compiled_patches_per_s']:.1f} patches/s "
            f"(mode {result.get('compile_mode', 'default')}, compiled in {result['compile_s']:.0f} s)")]
          if "compiled_patches_per_s" in result else []),
        *([f"  CUDA graphs, batched:    {result['graph_batched_patches_per_s']:.1f} patches/s",
           (f"  CUDA graphs, loop:       {result['graph_loop_patches_per_s']:.1f} patches/s "
            f"({result['graph_batched_over_loop']:.2f}x)")] if "graph_batched_patches_per_s" in result else []),
        *([f"  CUDA graphs: {result['graph_error']}"] if "graph_error" in result else []),
        (f"inference, {lr_side[0]}x{lr_side[1]} -> {hr_size[0]}x{hr_size[1]}: "
         f"{result['inference_ms']:.1f} ms per image"),
        f"peak memory: {result['peak_memory_mb']:.1f} MiB ({result['peak_memory_kind']})",
        *_format_profile(result.get("profile", {})),
        f"wall time: {result['wall_time_s']:.1f} s",
    ]
    return "\n".join(lines)


def _format_profile(profile: dict[str, Any]) -> list[str]:
    """The report's lines for a ``profile`` result (none without one)."""
    lines = []
    for name, p in profile.items():
        kernels = f", {p['kernels_per_step']:.0f} GPU kernels" if "kernels_per_step" in p else ""
        lines.append(f"profile, {name}, per step: {p['total_ms_per_step']:.1f} ms, "
                     f"{p['top_level_ops_per_step']:.0f} top-level operators{kernels}")
        lines += [f"  {row['share']:6.1%} {row['ms_per_step']:9.2f} ms {row['calls_per_step']:6.1f}x  {row['op'][:70]}"
                  for row in p["top"]]
    return lines

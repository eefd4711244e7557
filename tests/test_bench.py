"""Tests of tutorial_lib.bench: a tiny benchmark run returns the documented keys."""

from __future__ import annotations

import pytest
import torch

from tutorial_lib.bench import format_report, run_benchmark

torch.set_num_threads(2)

KEYS = {
    "device", "device_name", "torch_version", "threads", "M", "scale", "lr_patch", "batch_size", "channels",
    "n_blocks", "precision", "parameters", "batched_patches_per_s", "loop_patches_per_s", "batched_over_loop",
    "batched_steps", "loop_steps", "inference_ms", "inference_lr_size", "inference_hr_size", "peak_memory_mb",
    "peak_memory_kind", "wall_time_s", "cpu_allocator",
}


def test_tiny_benchmark_returns_documented_keys():
    result = run_benchmark(device="cpu", seconds=0.2, channels=8, n_blocks=2, batch_size=4, lr_patch=12,
                           image_side=32, inference_runs=1)
    assert set(result) == KEYS
    assert result["device"] == "cpu" and result["torch_version"] == torch.__version__
    assert result["cpu_allocator"]  # says whether the allocator tuning applied, and why not
    assert result["batched_patches_per_s"] > 0 and result["loop_patches_per_s"] > 0
    assert result["batched_over_loop"] == pytest.approx(
        result["batched_patches_per_s"] / result["loop_patches_per_s"], rel=1e-2)
    assert result["batched_steps"] >= 2 and result["loop_steps"] >= 2
    assert result["inference_hr_size"] == [64, 64] and result["inference_ms"] > 0
    assert result["peak_memory_mb"] > 0
    assert (result["M"], result["scale"], result["channels"]) == (4, 2, 8)
    report = format_report(result)
    assert "batched / loop" in report and "patches/s" in report


def test_benchmark_rejects_bad_settings():
    for seconds in (0, -1.0, float("nan"), float("inf")):  # a timing loop that could never end
        with pytest.raises(ValueError, match="seconds"):
            run_benchmark(device="cpu", seconds=seconds, channels=8)
    with pytest.raises(ValueError, match="batch_size"):
        run_benchmark(device="cpu", seconds=1.0, channels=8, batch_size=0)


def test_compiled_and_graphed_variants_are_cuda_only():
    with pytest.raises(ValueError, match="CUDA"):
        run_benchmark(device="cpu", seconds=0.1, channels=8, compile=True)
    with pytest.raises(ValueError, match="CUDA"):
        run_benchmark(device="cpu", seconds=0.1, channels=8, cuda_graph=True)


def test_layout_is_checked_and_channels_last_runs_on_the_cpu():
    with pytest.raises(ValueError, match="layout"):
        run_benchmark(device="cpu", seconds=0.1, channels=8, layout="nhwc")
    result = run_benchmark(device="cpu", seconds=0.05, channels=4, n_blocks=1, batch_size=2, lr_patch=8,
                           image_side=16, inference_runs=1, layout="channels_last")
    assert result["batched_patches_per_s"] > 0 and result["inference_hr_size"] == [32, 32]
    assert result["precision"] == "float32, channels_last"


def test_cli_bench_sweeps_batch_sizes(capsys):
    import json

    from tutorial_lib import cli

    assert cli.main(["bench", "--json", "--device", "cpu", "--seconds", "0.05", "--channels", "4",
                     "--n-blocks", "2", "--batch-size", "2", "3"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["batch_size"] for r in results] == [2, 3]
    assert all((r["channels"], r["n_blocks"]) == (4, 2) for r in results)
    assert all(r["batched_patches_per_s"] > 0 and r["loop_patches_per_s"] > 0 for r in results)


def test_report_shows_the_cuda_extras():
    result = run_benchmark(device="cpu", seconds=0.05, channels=4, n_blocks=1, batch_size=2, lr_patch=8,
                           image_side=16, inference_runs=1)
    result.update(compile_s=3.0, compiled_patches_per_s=12.5, compile_mode="reduce-overhead",
                  graph_batched_patches_per_s=20.0,
                  graph_loop_patches_per_s=10.0, graph_batched_over_loop=2.0)
    report = format_report(result)
    assert "torch.compile'd batched: 12.5 patches/s (mode reduce-overhead" in report
    assert "CUDA graphs, batched:    20.0 patches/s" in report and "(2.00x)" in report
    result = {k: v for k, v in result.items() if not k.startswith("graph_")} | {"graph_error": "RuntimeError: x"}
    assert "CUDA graphs: RuntimeError: x" in format_report(result)


def test_profile_shows_where_a_step_spends_its_time():
    result = run_benchmark(device="cpu", seconds=0.05, channels=4, n_blocks=1, batch_size=2, lr_patch=8,
                           image_side=16, inference_runs=1, profile_steps=2)
    profile = result["profile"]
    assert set(profile) == {"batched", "loop"}
    for p in profile.values():
        assert p["steps"] == 2 and p["total_ms_per_step"] > 0 and "kernels_per_step" not in p  # CPU run
        shares = [row["share"] for row in p["top"]]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-6
        assert any("convolution" in row["op"] for row in p["top"][:3])  # the convolutions dominate
    # one grouped pass against M = 4 separate experts: the loop dispatches several times as many operators
    assert profile["loop"]["top_level_ops_per_step"] > 2 * profile["batched"]["top_level_ops_per_step"]
    report = format_report(result)
    assert "profile, batched, per step" in report and "profile, loop, per step" in report


def test_compile_mode_and_profile_steps_are_checked():
    with pytest.raises(ValueError, match="compile_mode"):
        run_benchmark(device="cpu", seconds=0.1, channels=8, compile_mode="fast")
    with pytest.raises(ValueError, match="profile_steps"):
        run_benchmark(device="cpu", seconds=0.1, channels=8, profile_steps=-1)

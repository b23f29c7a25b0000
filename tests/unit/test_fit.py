"""Memory fit: the BRIEF's checks, and the arithmetic behind them."""

from __future__ import annotations

from typing import Any

import pytest

from mlctl import profiles
from mlctl.errors import FitError
from mlctl.facts import HostFacts, assumed_facts
from mlctl.fit import (
    GB,
    HOST_RAM_RESERVE_BYTES,
    compute_fit,
    kv_bytes_per_token,
    profiles_that_fit,
    require_fit,
)
from mlctl.gpus import parse_gpu_spec
from mlctl.profiles import Profile


def facts_for(spec: str, nodes: int = 1, ram_gb: float = 256, disk_gb: float = 2000) -> HostFacts:
    count, gpu = parse_gpu_spec(spec)
    return assumed_facts(
        count, gpu, nodes=nodes, ram_bytes=int(ram_gb * GB), disk_bytes=int(disk_gb * GB)
    )


def variant(profile: Profile, **changes: Any) -> Profile:
    """A copy of ``profile`` with dotted-path changes, re-validated."""
    data = profile.model_dump()
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return Profile.model_validate(data)


# ------------------------------------------------------------------ the BRIEF's checks


def test_a100_nvfp4_fits_with_about_50_gb_per_gpu() -> None:
    report = compute_fit(profiles.load("a100-nvfp4"), facts_for("8xA100-80GB"))
    assert report.fits
    assert 50 * GB <= report.weights_per_gpu_bytes <= 51 * GB
    assert report.chosen_context == 65536
    assert report.concurrency >= 1


def test_h100_fp8_on_one_node_does_not_fit() -> None:
    fp8 = variant(profiles.load("h200-fp8"), serve__speculative=None)
    report = compute_fit(fp8, facts_for("8xH100-80GB"))
    assert not report.fits
    assert report.checkpoint_bytes == int(681.5 * GB)
    # 681.5 GB / 8 = 85.2 GB of weights per GPU > 0.9 x 85.5 GB usable
    assert report.weights_per_gpu_bytes > report.usable_per_gpu_bytes
    with pytest.raises(FitError) as info:
        require_fit(report)
    assert "681.5 GB / 8 GPUs" in info.value.message
    assert "85.2 GB" in info.value.message
    assert "the weights (681.5 GB) are more than the usable memory of all 8 GPUs" in (
        info.value.message
    )


def test_h100_fp8_on_two_nodes_fits() -> None:
    report = compute_fit(profiles.load("h100-fp8"), facts_for("8xH100-80GB", nodes=2))
    assert report.fits
    assert (report.tensor_parallel, report.pipeline_parallel) == (8, 2)
    # pipeline parallel halves the layers each GPU holds: ceil(61 / 2) = 31 layers of 576 values
    assert report.kv_bytes_per_token_per_gpu == 31 * 576 * 2


def test_4090_q4_gguf_does_not_fit() -> None:
    q4 = variant(
        profiles.load("4090-gguf"),
        checkpoint__size_gb=405.0,
        checkpoint__quant="q4_k_m",
    )
    report = compute_fit(q4, facts_for("4xRTX4090-24GB", ram_gb=128, disk_gb=400))
    assert not report.fits
    joined = " ".join(report.reasons)
    assert "RAM" in joined  # experts that do not fit VRAM overflow 128 GB of RAM
    assert "405.0 GB of disk but only 400.0 GB" in joined


def test_4090_one_bit_quant_with_offload_fits() -> None:
    report = compute_fit(
        profiles.load("4090-gguf"), facts_for("4xRTX4090-24GB", ram_gb=128, disk_gb=400)
    )
    assert report.fits, report.reasons
    split = report.offload
    assert split is not None
    assert 0 < split.n_cpu_moe < split.moe_layers  # some experts in VRAM, the rest in RAM
    assert split.experts_in_vram_bytes + split.experts_in_ram_bytes == split.expert_bytes_total
    assert split.ram_needed_bytes == split.experts_in_ram_bytes + HOST_RAM_RESERVE_BYTES
    assert split.ram_needed_bytes <= 128 * GB
    assert report.weights_per_gpu_bytes + report.reserve_per_gpu_bytes <= (
        report.usable_per_gpu_bytes
    )
    assert report.free_per_gpu_bytes() >= 0


# ------------------------------------------------------------------ the arithmetic


def test_mla_kv_is_whole_on_every_tensor_parallel_rank() -> None:
    profile = profiles.load("a100-nvfp4")
    one = kv_bytes_per_token(profile, tp=1, pp=1, dtype="auto")
    eight = kv_bytes_per_token(profile, tp=8, pp=1, dtype="auto")
    assert one == eight == 61 * (512 + 64) * 2 == 70_272
    assert kv_bytes_per_token(profile, tp=8, pp=1, dtype="fp8") == 35_136


def test_gqa_kv_splits_across_ranks_then_replicates() -> None:
    profile = profiles.load("4090-ministral-14b")  # 40 layers, 8 KV heads, head_dim 128
    full = 40 * 2 * 8 * 128 * 2
    assert kv_bytes_per_token(profile, tp=1, pp=1, dtype="auto") == full
    assert kv_bytes_per_token(profile, tp=4, pp=1, dtype="auto") == full / 4
    assert kv_bytes_per_token(profile, tp=8, pp=1, dtype="auto") == full / 8
    # 16 ranks > 8 KV heads: each rank holds one replicated head
    assert kv_bytes_per_token(profile, tp=16, pp=1, dtype="auto") == full / 8


def test_context_is_capped_by_what_fits_and_says_so() -> None:
    profile = profiles.load("4090-ministral-14b")
    report = compute_fit(profile, facts_for("1xRTX4090-24GB"), max_model_len=262144)
    assert report.fits
    assert report.chosen_context == report.max_context_fit < 262144
    assert any("context capped" in w for w in report.warnings)
    # the cap is the KV room divided by the bytes per token
    expected = int(report.kv_room_per_gpu_bytes // report.kv_bytes_per_token_per_gpu)
    assert report.max_context_fit == expected - expected % 256


def test_max_context_never_exceeds_the_model() -> None:
    report = compute_fit(profiles.load("h200-fp8"), facts_for("8xH200-141GB"))
    assert report.max_context_fit == 262144
    assert report.chosen_context == 262144


def test_concurrency_follows_kv_room() -> None:
    report = compute_fit(profiles.load("a100-nvfp4"), facts_for("8xA100-80GB"))
    per_seq = report.kv_bytes_per_token_per_gpu * report.chosen_context
    assert report.concurrency == int(report.kv_room_per_gpu_bytes // per_seq)


def test_fp8_kv_cache_doubles_context() -> None:
    base = variant(profiles.load("a100-nvfp4"), serve__gpu_memory_utilization=0.7)
    auto = compute_fit(base, facts_for("8xA100-80GB"), max_model_len=262144)
    fp8 = compute_fit(
        variant(base, serve__kv_cache_dtype="fp8"), facts_for("8xA100-80GB"), max_model_len=262144
    )
    assert auto.fits and fp8.fits
    assert fp8.kv_bytes_per_token_per_gpu * 2 == auto.kv_bytes_per_token_per_gpu
    assert abs(fp8.max_context_fit - 2 * auto.max_context_fit) <= 256


def test_vision_off_frees_the_encoder() -> None:
    base = profiles.load("a100-nvfp4")
    on = compute_fit(base, facts_for("8xA100-80GB"))
    off = compute_fit(variant(base, serve__images_per_prompt=0), facts_for("8xA100-80GB"))
    assert off.checkpoint_bytes == on.checkpoint_bytes - 5 * GB
    assert off.kv_room_per_gpu_bytes > on.kv_room_per_gpu_bytes


def test_fewer_gpus_than_tensor_parallel() -> None:
    report = compute_fit(profiles.load("a100-nvfp4"), facts_for("4xA100-80GB"))
    assert not report.fits
    assert any("8 GPUs, but the host has 4" in r for r in report.reasons)


def test_no_gpu_host() -> None:
    facts = HostFacts(source="probe", gpus=[], nvidia_smi="missing")
    report = compute_fit(profiles.load("a100-nvfp4"), facts)
    assert not report.fits
    assert any("no usable NVIDIA GPU" in r for r in report.reasons)


def test_ram_shortfall_with_offload() -> None:
    report = compute_fit(
        profiles.load("4090-gguf"), facts_for("4xRTX4090-24GB", ram_gb=64, disk_gb=400)
    )
    assert not report.fits
    assert any("exceed the 64.0 GB of RAM" in r for r in report.reasons)


def test_offload_all_keeps_every_expert_in_ram() -> None:
    profile = variant(profiles.load("4090-gguf"), serve__offload_experts="all")
    report = compute_fit(profile, facts_for("4xRTX4090-24GB", ram_gb=256, disk_gb=400))
    assert report.offload is not None
    assert report.offload.n_cpu_moe == 58
    assert report.offload.experts_in_vram_bytes == 0


def test_suggestions_name_profiles_that_fit() -> None:
    everything = [profiles.load_file(e.path) for e in profiles.list_entries()]
    names = profiles_that_fit(everything, facts_for("8xH100-80GB"))
    assert "h100-nvfp4" in names
    assert "h200-fp8" not in names and "a100-nvfp4" not in names  # wrong GPU family or too big
    with pytest.raises(FitError) as info:
        require_fit(compute_fit(profiles.load("h200-fp8"), facts_for("8xH100-80GB")), names)
    assert "h100-nvfp4" in (info.value.hint or "")

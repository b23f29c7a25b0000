"""Memory fit: does the checkpoint plus its KV cache fit the GPUs, and how long a context?

Pure arithmetic on a profile and host facts. All sizes are bytes; GPU memory is
what nvidia-smi reports (MiB, so an "80GB" card holds 80 GiB), checkpoint sizes
are decimal GB as the Hub shows them.

Per GPU, for vLLM::

    usable   = memory x gpu_memory_utilization
    weights  = checkpoint bytes / (tensor_parallel x pipeline_parallel)
               (minus the vision encoder when images are switched off)
    reserve  = activations + CUDA graphs + NCCL buffers (RESERVE_* below)
    kv room  = usable - weights - reserve
    kv/token = layers_per_stage x (kv_lora_rank + qk_rope_head_dim) x dtype   (MLA:
               the latent cache is held whole on every tensor-parallel rank)
             = layers_per_stage x 2 x kv_heads_per_rank x head_dim x dtype    (GQA)
    max context = kv room / kv per token

llama.cpp splits layers across GPUs and can keep MoE expert tensors in system
RAM (``--n-cpu-moe N`` / ``-ot``); its report adds the VRAM/RAM split.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

from mlctl.errors import FitError
from mlctl.facts import HostFacts
from mlctl.profiles import Profile

GB = 1_000_000_000
GIB = 1024**3

# Per-GPU reserve outside weights and KV cache. vLLM: the peak activation memory
# of its profiling run (max_num_batched_tokens x hidden states, logits over a
# 131k vocabulary) plus CUDA graph pools (~0.5-1.5 GiB) and NCCL buffers; 3 GiB is
# what large-MoE recipes leave. llama.cpp: the compute buffer for a 512-token
# micro-batch over a 131k vocabulary plus the CUDA context.
RESERVE_BYTES: dict[str, int] = {
    "vllm": 3 * GIB,
    "llamacpp": int(1.5 * GIB),
    "ollama": int(1.5 * GIB),
}
# Extra activation room when the vision encoder is active (image tokens profiled).
VISION_RESERVE_BYTES = 1 * GIB
# System RAM kept free for the OS, the engine's host buffers and page cache.
HOST_RAM_RESERVE_BYTES = 8 * GIB
# A context that is capped by memory is rounded down to a multiple of this.
CONTEXT_STEP = 256
# Below this many tokens of context a deployment is not useful.
MIN_CONTEXT = 2048

# Bytes per cached value for each KV cache dtype ("auto" = the model's bf16).
KV_DTYPE_BYTES: dict[str, float] = {
    "auto": 2.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "fp8_e4m3": 1.0,
    "fp8_e5m2": 1.0,
    "q8_0": 34 / 32,  # ggml block of 32 int8 + one f16 scale
    "q4_0": 18 / 32,  # ggml block of 32 nibbles + one f16 scale
}


class OffloadSplit(BaseModel):
    """llama.cpp with MoE experts partly or wholly in system RAM."""

    moe_layers: int
    expert_bytes_total: int
    expert_bytes_per_layer: int
    n_cpu_moe: int = Field(description="MoE layers whose experts stay in system RAM.")
    dense_per_gpu_bytes: int
    experts_in_vram_bytes: int
    experts_in_ram_bytes: int
    vram_used_per_gpu_bytes: int
    ram_needed_bytes: int
    ram_available_bytes: int | None


class FitReport(BaseModel):
    """The per-GPU sums and the context and concurrency that follow from them."""

    engine: str
    gpus: str
    gpu_count: int
    nodes: int
    tensor_parallel: int
    pipeline_parallel: int
    gpu_memory_bytes: int
    usable_per_gpu_bytes: int
    checkpoint_bytes: int
    weights_per_gpu_bytes: int
    reserve_per_gpu_bytes: int
    kv_cache_dtype: str
    kv_bytes_per_token_per_gpu: float
    kv_room_per_gpu_bytes: int
    max_context_fit: int
    requested_context: int
    chosen_context: int
    concurrency: int
    fits: bool
    reasons: list[str] = Field(default_factory=list)
    disk_reason: str | None = None
    warnings: list[str] = Field(default_factory=list)
    offload: OffloadSplit | None = None

    def kv_per_gpu_bytes(self) -> int:
        """KV cache bytes per GPU at the chosen context and concurrency."""
        return int(self.kv_bytes_per_token_per_gpu * self.chosen_context * self.concurrency)

    def free_per_gpu_bytes(self) -> int:
        """Usable bytes per GPU left after weights, reserve and the chosen KV cache."""
        return (
            self.usable_per_gpu_bytes
            - self.weights_per_gpu_bytes
            - self.reserve_per_gpu_bytes
            - self.kv_per_gpu_bytes()
        )

    def sums(self) -> str:
        """The arithmetic in one line of words, for messages."""
        gb = _gb
        weights = self.weights_per_gpu_bytes
        if self.offload is not None:
            weights = self.offload.dense_per_gpu_bytes
        if self.offload is None:
            shards = self.tensor_parallel * self.pipeline_parallel
            if self.engine != "vllm":
                shards = max(self.gpu_count, 1)
            split = f"{gb(self.checkpoint_bytes)} GB / {shards} GPUs"
        else:
            split = f"non-expert tensors of {gb(self.checkpoint_bytes)} GB, experts apart"
        text = (
            f"{self.gpus}: usable {gb(self.usable_per_gpu_bytes)} GB per GPU "
            f"({gb(self.gpu_memory_bytes)} GB x utilization) - weights "
            f"{gb(weights)} GB "
            f"({split}) - reserve {gb(self.reserve_per_gpu_bytes)} GB = "
            f"{gb(self.kv_room_per_gpu_bytes)} GB for KV cache at "
            f"{self.kv_bytes_per_token_per_gpu:,.0f} B/token"
        )
        if self.offload is not None:
            o = self.offload
            ram = "unknown" if o.ram_available_bytes is None else f"{gb(o.ram_available_bytes)} GB"
            text += (
                f"; MoE experts {gb(o.expert_bytes_total)} GB: {gb(o.experts_in_vram_bytes)} GB "
                f"in VRAM, {gb(o.experts_in_ram_bytes)} GB in RAM (--n-cpu-moe {o.n_cpu_moe}), "
                f"RAM needed {gb(o.ram_needed_bytes)} GB of {ram}"
            )
        return text


def _gb(value: float) -> str:
    return f"{value / GB:,.1f}"


def kv_bytes_per_token(profile: Profile, tp: int, pp: int, dtype: str) -> float:
    """KV cache bytes one token costs on one GPU for this layout and dtype."""
    arch = profile.model.architecture
    per_value = KV_DTYPE_BYTES[dtype]
    layers = math.ceil(arch.layers / pp)
    if arch.attention == "mla":
        assert arch.kv_lora_rank is not None and arch.qk_rope_head_dim is not None
        return layers * (arch.kv_lora_rank + arch.qk_rope_head_dim) * per_value
    assert arch.num_kv_heads is not None and arch.head_dim is not None
    heads = arch.num_kv_heads // tp if arch.num_kv_heads >= tp else 1
    return layers * 2 * heads * arch.head_dim * per_value


def layout(profile: Profile, facts: HostFacts) -> tuple[int, int]:
    """Return (tensor_parallel, pipeline_parallel) for this profile on these facts."""
    tp = profile.serve.tensor_parallel or max(facts.gpu_count, 1)
    pp = profile.serve.pipeline_parallel or facts.nodes
    if profile.engine.kind != "vllm":
        return max(facts.gpu_count, 1), 1
    return tp, pp


def _ram_available(profile: Profile, facts: HostFacts) -> int | None:
    if facts.ram_total_bytes is not None:
        return facts.ram_total_bytes
    if facts.source == "assumed":
        return int(profile.hardware.ram_gb * GB)
    return None


def compute_fit(profile: Profile, facts: HostFacts, max_model_len: int | None = None) -> FitReport:
    """Return the FitReport of ``profile`` on ``facts``; ``fits`` says whether it holds.

    ``max_model_len`` overrides the profile's requested context. Never raises for
    a model that does not fit: use :func:`require_fit` for that.
    """
    engine = profile.engine.kind
    serve = profile.serve
    arch = profile.model.architecture
    tp, pp = layout(profile, facts)
    gpu_mem = facts.min_gpu_memory_bytes
    usable = int(gpu_mem * serve.gpu_memory_utilization)
    dtype = serve.kv_cache_dtype
    checkpoint = int(profile.checkpoint.size_gb * GB)
    if serve.speculative is not None:
        checkpoint += int(serve.speculative.size_gb * GB)
    # llama.cpp loads a vision encoder only with --mmproj, which mlctl does not pass.
    vision_on = engine != "llamacpp" and arch.vision_encoder_gb > 0 and serve.images_per_prompt != 0
    if arch.vision_encoder_gb > 0 and not vision_on and engine == "vllm":
        checkpoint -= int(arch.vision_encoder_gb * GB)  # vLLM skips the encoder
    reserve = int(serve.reserve_gb * GB) if serve.reserve_gb is not None else RESERVE_BYTES[engine]
    if vision_on:
        reserve += VISION_RESERVE_BYTES
    requested = max_model_len or serve.max_model_len
    reasons: list[str] = []
    warnings: list[str] = []
    gpus = max(facts.gpu_count, 0)

    if gpus == 0:
        reasons.append("the host has no usable NVIDIA GPU")
    if engine == "vllm" and tp * pp > gpus * facts.nodes:
        reasons.append(
            f"tensor_parallel x pipeline_parallel = {tp * pp} GPUs, "
            f"but the host has {gpus * facts.nodes}"
        )
    if engine == "vllm" and tp < gpus:
        warnings.append(
            f"--tensor-parallel-size {tp} uses {tp} of {gpus} GPUs; set it to the GPU count "
            "for full speed"
        )

    shards = tp * pp if engine == "vllm" else max(gpus, 1)
    expert_total = int(checkpoint * arch.expert_bytes_fraction) if arch.moe_layers else 0
    offload_possible = (
        engine == "llamacpp" and arch.moe_layers > 0 and serve.offload_experts != "none"
    )
    gpu_weights_total = checkpoint - expert_total if offload_possible else checkpoint
    weights = math.ceil(gpu_weights_total / shards)
    kv_tp = tp if engine == "vllm" else 1
    kv_token = kv_bytes_per_token(profile, kv_tp, pp if engine == "vllm" else 1, dtype)
    if engine != "vllm":
        kv_token = kv_token / max(gpus, 1)  # layers are split across GPUs
    kv_room = usable - weights - reserve
    parallel = serve.num_parallel if engine != "vllm" else 1
    max_fit = max(0, int(kv_room // (kv_token * parallel))) if kv_room > 0 else 0
    max_fit = min(max_fit, arch.max_context)
    if max_fit < arch.max_context:
        max_fit -= max_fit % CONTEXT_STEP
    chosen = min(requested, max_fit)
    all_usable = usable * shards
    layout_ok = engine != "vllm" or tp * pp <= gpus * facts.nodes
    if gpu_weights_total + reserve * shards > all_usable and gpus and layout_ok:
        reasons.append(
            f"the weights ({_gb(gpu_weights_total)} GB) are more than the usable memory of all "
            f"{shards} GPUs ({_gb(all_usable)} GB) once {_gb(reserve)} GB per GPU is reserved"
        )
    elif kv_room <= 0:
        reasons.append(
            f"weights ({_gb(weights)} GB) + reserve ({_gb(reserve)} GB) per GPU exceed the "
            f"usable {_gb(usable)} GB"
        )
    elif max_fit < MIN_CONTEXT:
        reasons.append(
            f"only {max_fit} tokens of KV cache fit per GPU; at least {MIN_CONTEXT} are needed"
        )
    elif requested > max_fit:
        warnings.append(
            f"context capped at {chosen:,} tokens: {requested:,} requested, {max_fit:,} fit"
        )
    if engine == "vllm":
        concurrency = int(kv_room // (kv_token * chosen)) if chosen > 0 and kv_room > 0 else 0
    else:
        concurrency = parallel

    offload: OffloadSplit | None = None
    if offload_possible and not reasons:
        offload = _offload_split(
            profile, facts, expert_total, usable, weights, reserve, kv_token * chosen * parallel
        )
        if offload.ram_available_bytes is not None and (
            offload.ram_needed_bytes > offload.ram_available_bytes
        ):
            reasons.append(
                f"MoE experts kept in RAM ({_gb(offload.experts_in_ram_bytes)} GB) plus "
                f"{_gb(HOST_RAM_RESERVE_BYTES)} GB for the system exceed the "
                f"{_gb(offload.ram_available_bytes)} GB of RAM"
            )
        weights_per_gpu = offload.vram_used_per_gpu_bytes
    else:
        weights_per_gpu = weights

    disk_free = max(facts.disk_free_bytes.values(), default=None)
    disk_reason = disk_check(profile, disk_free)
    if disk_reason:
        reasons.append(disk_reason)

    return FitReport(
        engine=engine,
        gpus=facts.gpu_summary(),
        gpu_count=gpus,
        nodes=facts.nodes,
        tensor_parallel=tp if engine == "vllm" else 1,
        pipeline_parallel=pp if engine == "vllm" else 1,
        gpu_memory_bytes=gpu_mem,
        usable_per_gpu_bytes=usable,
        checkpoint_bytes=checkpoint,
        weights_per_gpu_bytes=weights_per_gpu,
        reserve_per_gpu_bytes=reserve,
        kv_cache_dtype=dtype,
        kv_bytes_per_token_per_gpu=kv_token,
        kv_room_per_gpu_bytes=max(kv_room, 0),
        max_context_fit=max_fit,
        requested_context=requested,
        chosen_context=chosen if not reasons else 0,
        concurrency=concurrency if not reasons else 0,
        fits=not reasons,
        reasons=reasons,
        disk_reason=disk_reason,
        warnings=warnings,
        offload=offload,
    )


def _offload_split(
    profile: Profile,
    facts: HostFacts,
    expert_total: int,
    usable: int,
    dense_per_gpu: int,
    reserve: int,
    kv_per_gpu: float,
) -> OffloadSplit:
    """Place whole layers' experts in VRAM while room is left, the rest in RAM."""
    arch = profile.model.architecture
    gpus = max(facts.gpu_count, 1)
    per_layer = math.ceil(expert_total / arch.moe_layers)
    spare = usable - dense_per_gpu - reserve - math.ceil(kv_per_gpu)
    if profile.serve.offload_experts == "all":
        layers_in_vram = 0
    else:
        layers_in_vram = min(arch.moe_layers, max(0, spare // per_layer) * gpus)
    n_cpu_moe = arch.moe_layers - layers_in_vram
    in_vram = layers_in_vram * per_layer
    in_ram = expert_total - in_vram
    vram_used = dense_per_gpu + math.ceil(in_vram / gpus)
    return OffloadSplit(
        moe_layers=arch.moe_layers,
        expert_bytes_total=expert_total,
        expert_bytes_per_layer=per_layer,
        n_cpu_moe=n_cpu_moe,
        dense_per_gpu_bytes=dense_per_gpu,
        experts_in_vram_bytes=in_vram,
        experts_in_ram_bytes=in_ram,
        vram_used_per_gpu_bytes=vram_used,
        ram_needed_bytes=in_ram + HOST_RAM_RESERVE_BYTES,
        ram_available_bytes=_ram_available(profile, facts),
    )


def require_fit(report: FitReport, alternatives: list[str] | None = None) -> FitReport:
    """Return ``report`` when it fits; else raise FitError showing the sums.

    ``alternatives`` names built-in profiles that would fit, for the hint.
    """
    if report.fits:
        return report
    message = (
        "The model does not fit: " + "; ".join(report.reasons) + ". Sums: " + report.sums() + "."
    )
    if alternatives:
        hint = "Profiles that fit this hardware: " + ", ".join(alternatives) + "."
    else:
        hint = (
            "No built-in profile fits this hardware: rent more or larger GPUs "
            "(see `mlctl profiles list`), or lower serve.max_model_len."
        )
    raise FitError(message, hint)


def profiles_that_fit(profiles: list[Profile], facts: HostFacts) -> list[str]:
    """Names of the profiles that fit these facts, for a FitError's hint."""
    names = []
    for candidate in profiles:
        report = compute_fit(candidate, facts)
        if report.fits and _gpu_family_ok(candidate, facts):
            names.append(candidate.name)
    return names


def _gpu_family_ok(profile: Profile, facts: HostFacts) -> bool:
    from mlctl.gpus import family_of

    families = {family_of(g.name) for g in facts.gpus}
    return bool(families) and families <= set(profile.gpu_families) | {None}


def disk_bytes_needed(profile: Profile) -> int:
    """Bytes the download needs on the host: the checkpoint and any speculative draft."""
    need = int(profile.checkpoint.size_gb * GB)
    if profile.serve.speculative is not None:
        need += int(profile.serve.speculative.size_gb * GB)
    return need


def disk_check(profile: Profile, free_bytes: int | None) -> str | None:
    """Return a reason when the checkpoint cannot fit on the disk, else None."""
    need = disk_bytes_needed(profile)
    if free_bytes is not None and need > free_bytes:
        return f"the checkpoint needs {_gb(need)} GB of disk but only {_gb(free_bytes)} GB are free"
    return None

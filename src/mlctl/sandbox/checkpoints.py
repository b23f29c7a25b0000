"""Small synthetic checkpoints with the real file names and layout, for the sandbox Hub.

Pure builders: each returns a :class:`~mlctl.sandbox.hub.HubRepo` whose files have the names
and formats of the real repos (Mistral's ``params.json`` + ``tekken.json`` +
``consolidated-*.safetensors``; Hugging Face's ``config.json`` + ``model-*.safetensors``;
Unsloth's split GGUF shards in one folder per quant) at a few kilobytes each. The
safetensors files are valid (8-byte little-endian header length, JSON header, data); the
GGUF shards are valid GGUF v3 files holding split metadata and no tensors, except the
profile's own quant, which is a tiny real model (:mod:`mlctl.sandbox.tinygguf`) when the
``gguf`` package is importable.

``params.json``/``config.json`` mirror the architecture numbers of the profile (layers, heads,
MLA ranks, experts); only the widths (``dim``, ``hidden_dim``, vocabulary) are sandbox-small,
so that the tensors in the shards agree with them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
from collections.abc import Iterable, Sequence

from mlctl.profiles import Architecture, Profile, list_entries, load_file
from mlctl.sandbox import tinygguf
from mlctl.sandbox.hub import HubFile, HubRepo

GATED_REPO_ID = "mlctl-sandbox/gated-model"
HF_FORMAT_REPO_ID = "mlctl-sandbox/hf-format-model"
LARGE_FILE_REPO_ID = "mlctl-sandbox/large-file"
MISSING_REPO_ID = "mlctl-sandbox/no-such-model"
"""A repo id the sandbox Hub never serves (answers RepoNotFound)."""

SANDBOX_DIM = 64
SANDBOX_HIDDEN_DIM = 128
_BYTE_TOKENS = 256
_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[IMG]")
SANDBOX_VOCAB = _BYTE_TOKENS + len(_SPECIAL_TOKENS)

# The architecture of Mistral Large 3 (shared/seed/BRIEF.md), for repos no profile describes.
_MISTRAL_LARGE_3 = Architecture(
    layers=61,
    attention="mla",
    num_attention_heads=128,
    kv_lora_rank=512,
    qk_rope_head_dim=64,
    moe_layers=58,
    routed_experts=128,
    experts_per_token=4,
    expert_bytes_fraction=0.91,
    max_context=262144,
)
_SMALL_GQA = Architecture(
    layers=4,
    attention="gqa",
    num_attention_heads=8,
    num_kv_heads=2,
    head_dim=8,
    max_context=32768,
)
_TEKKEN_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_RE = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
_README = (
    "---\nlibrary_name: mlctl-sandbox\n---\n# {repo}\n\nSynthetic checkpoint for mlctl tests.\n"
)
_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
_GITATTRIBUTES_GGUF = b"*.gguf filter=lfs diff=lfs merge=lfs -text\n"


# --------------------------------------------------------------------------- file formats


def safetensors_bytes(
    tensors: dict[str, tuple[str, Sequence[int]]],
    seed: str = "",
    metadata: dict[str, str] | None = None,
) -> bytes:
    """Return a valid safetensors file holding ``tensors`` (name -> (dtype, shape)).

    The data are deterministic bytes derived from ``seed`` and the tensor's name.
    """
    widths = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1, "U8": 1, "I8": 1, "I32": 4}
    header: dict[str, object] = {
        "__metadata__": {"format": "pt", **(metadata or {})},
    }
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        dtype, shape = tensors[name]
        count = 1
        for dim in shape:
            count *= dim
        nbytes = count * widths[dtype]
        blobs.append(hashlib.shake_256(f"{seed}/{name}".encode()).digest(nbytes))
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the header is padded to 8 bytes, as safetensors does
    return struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs)


def parse_safetensors_header(data: bytes) -> dict[str, object]:
    """Return the JSON header of a safetensors file; raises ValueError when it is malformed."""
    if len(data) < 8:
        raise ValueError("too short for a safetensors file")
    (length,) = struct.unpack("<Q", data[:8])
    if 8 + length > len(data):
        raise ValueError("header length runs past the end of the file")
    header = json.loads(data[8 : 8 + length])
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not a JSON object")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + length + end != len(data):
        raise ValueError("tensor data does not end at the end of the file")
    return header


def tekken_json() -> bytes:
    """Return a small valid ``tekken.json``: 256 byte tokens plus a few control tokens."""
    payload = {
        "config": {
            "pattern": _TEKKEN_PATTERN,
            "num_vocab_tokens": _BYTE_TOKENS,
            "default_vocab_size": SANDBOX_VOCAB,
            "default_num_special_tokens": len(_SPECIAL_TOKENS),
            "version": "v13",
        },
        "vocab": [
            {
                "rank": i,
                "token_bytes": base64.b64encode(bytes([i])).decode(),
                "token_str": chr(i) if 32 <= i < 127 else None,
            }
            for i in range(_BYTE_TOKENS)
        ],
        "special_tokens": [
            {"rank": i, "token_str": tok, "is_control": True}
            for i, tok in enumerate(_SPECIAL_TOKENS)
        ],
    }
    return json.dumps(payload, indent=1).encode()


def _gguf_string(value: str) -> bytes:
    raw = value.encode()
    return struct.pack("<Q", len(raw)) + raw


def gguf_bytes(
    architecture: str, name: str, split_no: int = 0, split_count: int = 1, padding: int = 0
) -> bytes:
    """Return a valid GGUF v3 file with no tensors: metadata for one shard of a split.

    ``split_no`` is 0-based as in llama.cpp's ``split.no``; ``padding`` appends zero bytes
    (after the metadata; readers that stop at the tensor infos ignore them).
    """
    string, uint16, int32 = 8, 2, 5  # GGUF metadata value types
    entries: list[bytes] = [
        _gguf_string("general.architecture")
        + struct.pack("<I", string)
        + _gguf_string(architecture),
        _gguf_string("general.name") + struct.pack("<I", string) + _gguf_string(name),
    ]
    if split_count > 1:
        entries += [
            _gguf_string("split.no") + struct.pack("<IH", uint16, split_no),
            _gguf_string("split.count") + struct.pack("<IH", uint16, split_count),
            _gguf_string("split.tensors.count") + struct.pack("<Ii", int32, 0),
        ]
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, len(entries))
    return header + b"".join(entries) + b"\0" * padding


def gguf_split_names(first_shard: str) -> list[str]:
    """Return every shard's path of a split GGUF from its first shard's path (or just it)."""
    folder, _, filename = first_shard.rpartition("/")
    match = _SPLIT_RE.match(filename)
    if match is None:
        return [first_shard]
    count = int(match.group("count"))
    prefix = f"{folder}/" if folder else ""
    return [
        f"{prefix}{match.group('stem')}-{k:05d}-of-{count:05d}.gguf" for k in range(1, count + 1)
    ]


# --------------------------------------------------------------------------- model configs


def mistral_params(arch: Architecture, *, n_layers: int | None = None) -> dict[str, object]:
    """Return ``params.json`` for ``arch``: its real layer/head/MLA/MoE numbers, small widths."""
    params: dict[str, object] = {
        "dim": SANDBOX_DIM,
        "n_layers": n_layers if n_layers is not None else arch.layers,
        "hidden_dim": SANDBOX_HIDDEN_DIM,
        "n_heads": arch.num_attention_heads,
        "norm_eps": 1e-06,
        "vocab_size": SANDBOX_VOCAB,
        "rope_theta": 10000.0,
        "max_seq_len": arch.max_context,
        "max_position_embeddings": arch.max_context,
    }
    if arch.attention == "mla":
        params.update(
            n_kv_heads=arch.num_attention_heads,
            kv_lora_rank=arch.kv_lora_rank,
            qk_rope_head_dim=arch.qk_rope_head_dim,
            qk_nope_head_dim=128,
            v_head_dim=128,
            q_lora_rank=1536,
        )
    else:
        params.update(n_kv_heads=arch.num_kv_heads, head_dim=arch.head_dim)
    if arch.moe_layers:
        params["moe"] = {
            "num_experts": arch.routed_experts,
            "num_experts_per_tok": arch.experts_per_token,
            "num_shared_experts": 1,
            "first_k_dense_replace": arch.layers - arch.moe_layers,
            "expert_hidden_dim": SANDBOX_HIDDEN_DIM,
        }
    return params


def hf_config(arch: Architecture) -> dict[str, object]:
    """Return an HF ``config.json`` for ``arch`` (Mistral architecture, small widths)."""
    config: dict[str, object] = {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "hidden_size": SANDBOX_DIM,
        "intermediate_size": SANDBOX_HIDDEN_DIM,
        "num_hidden_layers": arch.layers,
        "num_attention_heads": arch.num_attention_heads,
        "num_key_value_heads": arch.num_kv_heads or arch.num_attention_heads,
        "max_position_embeddings": arch.max_context,
        "vocab_size": SANDBOX_VOCAB,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0,
        "torch_dtype": "bfloat16",
        "tie_word_embeddings": False,
    }
    if arch.head_dim:
        config["head_dim"] = arch.head_dim
    if arch.attention == "mla":
        config.update(
            architectures=["DeepseekV3ForCausalLM"],
            model_type="deepseek_v3",
            kv_lora_rank=arch.kv_lora_rank,
            qk_rope_head_dim=arch.qk_rope_head_dim,
            n_routed_experts=arch.routed_experts,
            num_experts_per_tok=arch.experts_per_token,
            first_k_dense_replace=arch.layers - arch.moe_layers,
        )
    return config


def _json_file(path: str, payload: object) -> HubFile:
    return HubFile(path, json.dumps(payload, indent=2).encode() + b"\n")


def _shard_layers(n_layers: int, shards: int) -> list[range]:
    per = -(-n_layers // shards)
    return [range(i * per, min((i + 1) * per, n_layers)) for i in range(shards)]


# --------------------------------------------------------------------------- repos


def mistral_files(
    arch: Architecture, *, seed: str, shards: int = 2, n_layers: int | None = None
) -> list[HubFile]:
    """Return a Mistral-format layout: params.json, tekken.json, consolidated shards, prompt."""
    params = mistral_params(arch, n_layers=n_layers)
    layers = int(str(params["n_layers"]))
    files = [
        _json_file("params.json", params),
        HubFile("tekken.json", tekken_json()),
        HubFile("SYSTEM_PROMPT.txt", b"You are a helpful assistant running in mlctl's sandbox.\n"),
    ]
    for index, block in enumerate(_shard_layers(layers, shards), start=1):
        tensors: dict[str, tuple[str, Sequence[int]]] = {}
        for layer in block:
            tensors[f"layers.{layer}.attention_norm.weight"] = ("BF16", [SANDBOX_DIM])
            tensors[f"layers.{layer}.ffn_norm.weight"] = ("BF16", [SANDBOX_DIM])
        if index == 1:
            tensors["tok_embeddings.weight"] = ("BF16", [SANDBOX_VOCAB, SANDBOX_DIM])
        if index == shards:
            tensors["norm.weight"] = ("BF16", [SANDBOX_DIM])
            tensors["output.weight"] = ("BF16", [SANDBOX_VOCAB, SANDBOX_DIM])
        name = f"consolidated-{index:05d}-of-{shards:05d}.safetensors"
        files.append(HubFile(name, safetensors_bytes(tensors, seed=f"{seed}/{name}")))
    return files


def hf_files(arch: Architecture, *, seed: str, shards: int = 2) -> list[HubFile]:
    """Return an HF-format layout: config.json, model shards + index, tokenizer files."""
    files = [
        _json_file("config.json", hf_config(arch)),
        _json_file("generation_config.json", {"bos_token_id": 1, "eos_token_id": 2}),
        _json_file(
            "tokenizer.json",
            {
                "version": "1.0",
                "added_tokens": [
                    {"id": i, "content": tok, "special": True}
                    for i, tok in enumerate(_SPECIAL_TOKENS)
                ],
                "model": {
                    "type": "BPE",
                    "vocab": {f"<0x{i:02X}>": len(_SPECIAL_TOKENS) + i for i in range(256)},
                    "merges": [],
                    "byte_fallback": True,
                },
            },
        ),
        _json_file("tokenizer_config.json", {"bos_token": "<s>", "eos_token": "</s>"}),
    ]
    weight_map: dict[str, str] = {}
    total = 0
    for index, block in enumerate(_shard_layers(arch.layers, shards), start=1):
        tensors: dict[str, tuple[str, Sequence[int]]] = {}
        for layer in block:
            tensors[f"model.layers.{layer}.input_layernorm.weight"] = ("BF16", [SANDBOX_DIM])
            tensors[f"model.layers.{layer}.post_attention_layernorm.weight"] = (
                "BF16",
                [SANDBOX_DIM],
            )
        if index == 1:
            tensors["model.embed_tokens.weight"] = ("BF16", [SANDBOX_VOCAB, SANDBOX_DIM])
        if index == shards:
            tensors["model.norm.weight"] = ("BF16", [SANDBOX_DIM])
            tensors["lm_head.weight"] = ("BF16", [SANDBOX_VOCAB, SANDBOX_DIM])
        name = f"model-{index:05d}-of-{shards:05d}.safetensors"
        data = safetensors_bytes(tensors, seed=f"{seed}/{name}")
        files.append(HubFile(name, data))
        weight_map.update({tensor: name for tensor in tensors})
        total += len(data)
    files.append(
        _json_file(
            "model.safetensors.index.json",
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
        )
    )
    return files


def _repo_extras(repo_id: str, gguf: bool = False) -> list[HubFile]:
    return [
        HubFile(".gitattributes", _GITATTRIBUTES_GGUF if gguf else _GITATTRIBUTES),
        HubFile("README.md", _README.format(repo=repo_id).encode()),
    ]


def mistral_repo(
    repo_id: str,
    arch: Architecture = _MISTRAL_LARGE_3,
    *,
    shards: int = 2,
    n_layers: int | None = None,
    gated: bool = False,
) -> HubRepo:
    """Return a Mistral-format repo (``params.json`` + ``tekken.json`` + consolidated shards)."""
    files = mistral_files(arch, seed=repo_id, shards=shards, n_layers=n_layers)
    return HubRepo(repo_id, _repo_extras(repo_id) + files, gated=gated)


def hf_repo(repo_id: str, arch: Architecture = _SMALL_GQA, *, shards: int = 2) -> HubRepo:
    """Return an HF-format repo (``config.json`` + ``model-*.safetensors`` + ``tokenizer.json``).

    Serve it under a Mistral profile's repo id to stage "Mistral flags on an HF-format repo".
    """
    return HubRepo(repo_id, _repo_extras(repo_id) + hf_files(arch, seed=repo_id, shards=shards))


def gguf_repo(
    repo_id: str,
    first_shard: str,
    other_quants: dict[str, int] | None = None,
    *,
    moe: bool = True,
    real_weights: bool | None = None,
) -> HubRepo:
    """Return an Unsloth-style GGUF repo: the split of ``first_shard`` plus other quant folders.

    ``other_quants`` maps a quant folder name to its shard count (default: two other quants),
    and a vision projector ``mmproj-F16.gguf`` sits at the top, so ``include`` patterns that
    pick one quant folder are really exercised.

    ``real_weights`` (default: when the ``gguf`` package is importable) makes the split of
    ``first_shard`` a tiny real model (:mod:`mlctl.sandbox.tinygguf`, a Mixture-of-Experts one
    when ``moe``) that llama.cpp's ``llama-server`` loads; otherwise, and for the other
    quants, the shards are valid GGUF files holding only split metadata.
    """
    folder, _, filename = first_shard.rpartition("/")
    match = _SPLIT_RE.match(filename)
    stem = match.group("stem") if match else filename.removesuffix(".gguf")
    base = stem.removesuffix(f"-{folder}") if folder else stem
    wanted = gguf_split_names(first_shard)
    quants = {"UD-Q2_K_XL": 3, "Q4_K_M": 2} if other_quants is None else other_quants
    for quant, count in quants.items():
        if quant == folder:
            continue
        if count > 1:
            wanted += gguf_split_names(f"{quant}/{base}-{quant}-00001-of-{count:05d}.gguf")
        else:
            wanted.append(f"{quant}/{base}-{quant}.gguf")
    files = _repo_extras(repo_id, gguf=True)
    real: dict[str, bytes] = {}
    if real_weights is None:
        real_weights = tinygguf.available()
    if real_weights:
        # The chosen quant's split is a tiny model llama.cpp really loads; others stay small.
        shards = tinygguf.tiny_gguf_bytes(
            first_shard.rpartition("/")[2], moe=moe, name=base, seed=repo_id
        )
        real = {f"{folder}/{k}" if folder else k: v for k, v in shards.items()}
    for path in wanted:
        if path in real:
            files.append(HubFile(path, real[path]))
            continue
        split = _SPLIT_RE.match(path.rpartition("/")[2])
        no, count = (int(split.group("no")) - 1, int(split.group("count"))) if split else (0, 1)
        files.append(HubFile(path, gguf_bytes("deepseek2", base, no, count, padding=64 * (no + 1))))
    files.append(HubFile("mmproj-F16.gguf", gguf_bytes("clip", f"{base} mmproj")))
    return HubRepo(repo_id, files)


def large_file_repo(
    repo_id: str = LARGE_FILE_REPO_ID, size: int = 50_000_000, path: str = "blob.bin"
) -> HubRepo:
    """Return a repo with one synthetic file of ``size`` bytes (streamed, not held in memory)."""
    return HubRepo(repo_id, [HubFile.synthetic(path, size, seed=f"{repo_id}/{path}")])


RESUMABLE_REPO_ID = "mlctl-sandbox/resumable-model"


def resumable_repo(
    repo_id: str = RESUMABLE_REPO_ID,
    sizes: tuple[int, ...] = (4_000_000, 40_000_000, 40_000_000),
) -> HubRepo:
    """An HF-layout repo with one small and some large synthetic shards (interruption tests).

    Large shards exceed huggingface_hub's 10 MiB download chunk, so an interrupted shard
    is visibly partial while the small one is already complete; the content is
    synthetic, not loadable weights.
    """
    files = [_json_file("config.json", {"architectures": ["MistralForCausalLM"]})]
    for k, size in enumerate(sizes, 1):
        name = f"model-{k:05d}-of-{len(sizes):05d}.safetensors"
        files.append(HubFile.synthetic(name, size, seed=f"{repo_id}/{name}"))
    return HubRepo(repo_id, files)


def gated_repo(repo_id: str = GATED_REPO_ID) -> HubRepo:
    """Return a small gated Mistral-format repo: files need a valid token."""
    return mistral_repo(repo_id, _SMALL_GQA, gated=True)


def hf_format_repo(repo_id: str = HF_FORMAT_REPO_ID) -> HubRepo:
    """Return the sandbox's standing HF-format repo."""
    return hf_repo(repo_id)


def profile_repos(profile: Profile) -> list[HubRepo]:
    """Return the repos a profile downloads: its checkpoint, and its speculative draft if any."""
    ckpt, arch = profile.checkpoint, profile.model.architecture
    repos: list[HubRepo] = []
    if ckpt.format == "mistral":
        repos.append(mistral_repo(ckpt.repo, arch))
    elif ckpt.format == "hf":
        repos.append(hf_repo(ckpt.repo, arch))
    elif ckpt.gguf_file:
        repos.append(gguf_repo(ckpt.repo, ckpt.gguf_file, moe=bool(arch.moe_layers)))
    else:
        # An Ollama profile names the original weights (Ollama pulls its own GGUF); Mistral's
        # Ministral 3 repos ship both the Mistral and the HF layout.
        files = mistral_files(arch, seed=ckpt.repo) + hf_files(arch, seed=ckpt.repo)
        repos.append(HubRepo(ckpt.repo, _repo_extras(ckpt.repo) + files))
    spec = profile.serve.speculative
    if spec is not None and spec.repo:
        repos.append(mistral_repo(spec.repo, arch, n_layers=1))
    return repos


def builtin_repos(profiles: Iterable[Profile] | None = None) -> list[HubRepo]:
    """Return one repo per distinct repo id used by the built-in profiles (or ``profiles``)."""
    if profiles is None:
        profiles = [load_file(e.path) for e in list_entries() if e.origin == "builtin"]
    repos: dict[str, HubRepo] = {}
    for profile in profiles:
        for repo in profile_repos(profile):
            repos.setdefault(repo.repo_id, repo)
    return [repos[k] for k in sorted(repos)]

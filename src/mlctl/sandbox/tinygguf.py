"""Tiny real GGUF models that llama.cpp's ``llama-server`` loads and runs on a CPU.

A llama-architecture model with random weights (2 layers, hidden 64, head size 32 so that
quantized KV caches such as ``q8_0`` work), a byte-level BPE vocabulary of a few hundred
tokens and a ChatML chat template in ``tokenizer.chat_template``: about 0.4 MB, or about
1 MB as a Mixtral-style Mixture-of-Experts (4 experts, 2 used per token). It can be split
into shards named
like Unsloth's (``…-00001-of-00004.gguf``): the first shard holds all the metadata,
every shard holds ``split.no``/``split.count``/``split.tensors.count`` as llama.cpp's
``llama-gguf-split`` writes them, and the server loads the split from its first shard.

Needs the ``gguf`` package (and numpy): :func:`available` says whether it is importable.

    python -m mlctl.sandbox.tinygguf OUT.gguf [--moe] [--shards N]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

N_EMBD = 64
N_FF = 128
N_LAYER = 2
N_HEAD = 2
N_HEAD_KV = 1
N_EXPERT = 4
N_EXPERT_USED = 2
CONTEXT_LENGTH = 32768
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_MERGE_WORDS = (
    "the",
    " the",
    " and",
    "ing",
    " to",
    " of",
    " a",
    " in",
    " is",
    "hello",
    " hello",
    " world",
    " model",
    " sandbox",
    " mlctl",
)
_SPLIT_RE = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def available() -> bool:
    """True when the ``gguf`` package (and numpy) can be imported."""
    return all(importlib.util.find_spec(m) is not None for m in ("gguf", "numpy"))


def _byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table (byte-level BPE)."""
    keep = list(range(ord("!"), ord("~") + 1))
    keep += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table: dict[int, str] = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def vocabulary() -> tuple[list[str], list[int], list[str]]:
    """Return (tokens, token types, merges) of the tiny byte-level BPE vocabulary."""
    chars = _byte_chars()
    tokens = list(SPECIAL_TOKENS) + chars
    types = [3] * len(SPECIAL_TOKENS) + [1] * len(chars)  # 3 = control, 1 = normal
    merges: list[str] = []
    known = set(tokens)
    for word in _MERGE_WORDS:
        pieces = [chars[b] for b in word.encode()]
        current = pieces[0]
        for piece in pieces[1:]:
            merged = current + piece
            if merged not in known:
                merges.append(f"{current} {piece}")
                tokens.append(merged)
                types.append(1)
                known.add(merged)
            current = merged
    return tokens, types, merges


def _tensor_shapes(moe: bool, n_vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, numpy shape) of every tensor; numpy shapes are ggml's ``ne`` reversed."""
    kv = N_EMBD // N_HEAD * N_HEAD_KV
    shapes: list[tuple[str, tuple[int, ...]]] = [
        ("token_embd.weight", (n_vocab, N_EMBD)),
        ("output_norm.weight", (N_EMBD,)),
        ("output.weight", (n_vocab, N_EMBD)),
    ]
    for i in range(N_LAYER):
        blk = f"blk.{i}"
        shapes += [
            (f"{blk}.attn_norm.weight", (N_EMBD,)),
            (f"{blk}.attn_q.weight", (N_EMBD, N_EMBD)),
            (f"{blk}.attn_k.weight", (kv, N_EMBD)),
            (f"{blk}.attn_v.weight", (kv, N_EMBD)),
            (f"{blk}.attn_output.weight", (N_EMBD, N_EMBD)),
            (f"{blk}.ffn_norm.weight", (N_EMBD,)),
        ]
        if moe:
            shapes += [
                (f"{blk}.ffn_gate_inp.weight", (N_EXPERT, N_EMBD)),
                (f"{blk}.ffn_gate_exps.weight", (N_EXPERT, N_FF, N_EMBD)),
                (f"{blk}.ffn_up_exps.weight", (N_EXPERT, N_FF, N_EMBD)),
                (f"{blk}.ffn_down_exps.weight", (N_EXPERT, N_EMBD, N_FF)),
            ]
        else:
            shapes += [
                (f"{blk}.ffn_gate.weight", (N_FF, N_EMBD)),
                (f"{blk}.ffn_up.weight", (N_FF, N_EMBD)),
                (f"{blk}.ffn_down.weight", (N_EMBD, N_FF)),
            ]
    return shapes


def _tensors(moe: bool, n_vocab: int, seed: str) -> list[tuple[str, npt.NDArray[np.float32]]]:
    import numpy as np

    digest = hashlib.sha256(seed.encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    out: list[tuple[str, npt.NDArray[np.float32]]] = []
    for name, shape in _tensor_shapes(moe, n_vocab):
        if name.endswith("norm.weight"):
            data = np.ones(shape, dtype=np.float32)
        else:
            data = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        out.append((name, data))
    return out


def _split_names(first: str, shards: int) -> list[str]:
    match = _SPLIT_RE.match(first)
    if match is None:
        if shards == 1:
            return [first]
        stem = first.removesuffix(".gguf")
    else:
        stem = match.group("stem")
        shards = int(match.group("count"))
    return [f"{stem}-{k:05d}-of-{shards:05d}.gguf" for k in range(1, shards + 1)]


def write_tiny_gguf(
    path: Path, *, moe: bool = False, shards: int = 1, name: str = "mlctl tiny", seed: str = ""
) -> list[Path]:
    """Write the tiny model at ``path`` (a split when ``shards`` > 1); return the files.

    With a split, ``path`` may be the first shard's name (``…-00001-of-0000N.gguf``,
    whose N wins over ``shards``) or a plain ``….gguf`` that gets the suffixes.
    """
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    names = _split_names(path.name, shards)
    count = len(names)
    tokens, types, merges = vocabulary()
    tensors = _tensors(moe, len(tokens), seed or name)
    per = -(-len(tensors) // count)
    written: list[Path] = []
    for index, filename in enumerate(names):
        target = path.with_name(filename)
        writer = gguf.GGUFWriter(target, "llama")
        if index == 0:
            writer.add_name(name)
            writer.add_context_length(CONTEXT_LENGTH)
            writer.add_embedding_length(N_EMBD)
            writer.add_block_count(N_LAYER)
            writer.add_feed_forward_length(N_FF)
            writer.add_head_count(N_HEAD)
            writer.add_head_count_kv(N_HEAD_KV)
            writer.add_rope_dimension_count(N_EMBD // N_HEAD)
            writer.add_rope_freq_base(10000.0)
            writer.add_layer_norm_rms_eps(1e-5)
            writer.add_file_type(0)  # all F32
            writer.add_vocab_size(len(tokens))
            if moe:
                writer.add_expert_count(N_EXPERT)
                writer.add_expert_used_count(N_EXPERT_USED)
            writer.add_tokenizer_model("gpt2")
            writer.add_tokenizer_pre("gpt-2")
            writer.add_token_list(tokens)
            writer.add_token_types(types)
            writer.add_token_merges(merges)
            writer.add_bos_token_id(SPECIAL_TOKENS.index("<|endoftext|>"))
            writer.add_eos_token_id(SPECIAL_TOKENS.index("<|im_end|>"))
            writer.add_add_bos_token(False)
            writer.add_chat_template(CHATML_TEMPLATE)
        if count > 1:
            writer.add_uint16("split.no", index)
            writer.add_uint16("split.count", count)
            writer.add_int32("split.tensors.count", len(tensors))
        for tensor_name, data in tensors[index * per : (index + 1) * per]:
            writer.add_tensor(tensor_name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        written.append(target)
    return written


def tiny_gguf_bytes(
    first_shard: str, *, moe: bool = True, name: str = "mlctl tiny", seed: str = ""
) -> dict[str, bytes]:
    """Return {file name: bytes} of the tiny model split like ``first_shard``'s name."""
    with tempfile.TemporaryDirectory(prefix="mlctl-tinygguf-") as tmp:
        files = write_tiny_gguf(Path(tmp) / first_shard, moe=moe, name=name, seed=seed)
        return {f.name: f.read_bytes() for f in files}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlctl.sandbox.tinygguf")
    parser.add_argument("path", type=Path, help="output file (or first shard's name)")
    parser.add_argument("--moe", action="store_true", help="Mixture-of-Experts variant")
    parser.add_argument("--shards", type=int, default=1, help="split into N shards")
    args = parser.parse_args(argv)
    for written in write_tiny_gguf(args.path, moe=args.moe, shards=args.shards):
        print(written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

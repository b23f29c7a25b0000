#!/usr/bin/env python3
"""Image input (a vision request) against an mlctl endpoint with the OpenAI SDK.

Sends a small generated PNG as a data URL. Mistral Large 3's vision encoder works
best with images near a 1:1 aspect ratio. Profiles with serve.images_per_prompt: 0
switch vision off (the server then refuses images).
"""

from __future__ import annotations

import base64
import struct
import sys
import zlib

from _endpoint import endpoint
from openai import OpenAI


def tiny_png(size: int = 16) -> bytes:
    """A square red PNG, made without any imaging library."""
    row = b"\x00" + b"\xff\x00\x00" * size
    raw = zlib.compress(row * size)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def main() -> None:
    base_url, key, model = endpoint()
    client = OpenAI(base_url=base_url, api_key=key)
    url = "data:image/png;base64," + base64.b64encode(tiny_png()).decode()
    reply = client.chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What colour is this image?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
        max_tokens=32,
    )
    text = reply.choices[0].message.content
    print(text)
    sys.exit(0 if text else 1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Chat with an mlctl endpoint through the OpenAI SDK (`pip install openai`), streaming.

    MLCTL_ENDPOINT=http://127.0.0.1:8001/v1 MLCTL_MODEL=... MLCTL_API_KEY_FILE=... \\
        python examples/openai_chat.py "Why is the sky blue?"
"""

from __future__ import annotations

import sys

from _endpoint import endpoint
from openai import OpenAI


def main() -> None:
    base_url, key, model = endpoint()
    client = OpenAI(base_url=base_url, api_key=key)
    prompt = " ".join(sys.argv[1:]) or "Say hello in five words."
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=64,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()


if __name__ == "__main__":
    main()

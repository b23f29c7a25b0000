#!/usr/bin/env python3
"""Function calling (tools) against an mlctl endpoint with the OpenAI SDK.

vLLM needs `--enable-auto-tool-choice --tool-call-parser mistral`, which mlctl's
Mistral profiles pass (serve.tool_calling). Prints the tool call the model makes.
"""

from __future__ import annotations

import json

from _endpoint import endpoint
from openai import OpenAI

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def main() -> None:
    base_url, key, model = endpoint()
    client = OpenAI(base_url=base_url, api_key=key)
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the weather in Paris? Use the tool."}],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="auto",
        max_tokens=128,
    )
    message = reply.choices[0].message
    for call in message.tool_calls or []:
        function = getattr(call, "function", None)
        if function is not None:
            print(f"tool call: {function.name}({json.dumps(json.loads(function.arguments))})")
    if message.content:
        print(f"text: {message.content}")


if __name__ == "__main__":
    main()

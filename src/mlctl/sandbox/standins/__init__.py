"""Stand-ins for a GPU host's tools: ``nvidia-smi``, ``vllm``, ``ollama``, ``llama-server``.

Each runs as its own process (``python -m mlctl.sandbox.standins.vllm serve …``)
on a machine without a GPU, reads the simulated GPUs and the failure scenario
from ``$MLCTL_SANDBOX_STATE`` (see :mod:`mlctl.sandbox.standins.common`), parses
the real CLI flags, serves the real HTTP endpoints on loopback, prints logs
shaped like the real engine's, and fails on purpose with the real messages.

Pure standard library at run time. :mod:`mlctl.sandbox.standins.install` writes
the state files and the ``#!/bin/sh`` wrappers that put them on a PATH.
"""

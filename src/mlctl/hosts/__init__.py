"""Connections to hosts: the Connector protocol (base), SSH and local implementations,
host strings and pasted ssh lines (target), host keys (known_hosts), saved hosts (saved)."""

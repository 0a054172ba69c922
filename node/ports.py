"""Find a listening port that another program holds before anything slow starts: `dfnode serve` loads
both models (tens of seconds) and may log a console setup token, and neither should happen for a
start that is bound to fail on its ports."""

from __future__ import annotations

import socket

from core.errors import ConfigError
from node.config import Config, Role


def _taken(address: str, port: int) -> str | None:
    """Why `port` on `address` cannot be listened on, or None."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listeners do
        try:
            probe.bind((address, port))
            probe.listen(1)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def check_ports_free(config: Config) -> None:
    """Raise `ConfigError` naming each configured listening port that cannot be bound."""
    wanted = []
    receives = config.node.runs(Role.RECEIVER)
    if config.tls.plain_listener and receives:
        wanted.append(("node.port", config.node.bind_address, config.node.port))
    if config.tls.port is not None and receives:
        wanted.append(("tls.port", config.node.bind_address, config.tls.port))
    if config.console.enabled and config.console.port:
        wanted.append(("console.port", config.console.bind_address, config.console.port))
    problems = [(key, f"cannot listen on {address} port {port}: {why} (another program may use it; choose "
                      "another port)")
                for key, address, port in wanted if (why := _taken(address, port)) is not None]
    if problems:
        raise ConfigError("listening ports", problems)

"""Reading a secret from its file: the one way every ``*-file`` flag and ``*_file`` key is read.

password = read_secret(Path("/run/secrets/whatsapp-password"))
"""

from __future__ import annotations

from pathlib import Path

from gateway.app.settings import ConfigError


def read_secret(path: Path) -> str:
    """A secret from its file, less the line ending an editor adds (spaces may belong to it)."""
    try:
        value = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read the secret file {path}: {reason}") from None
    if not value.strip():
        raise ConfigError(f"the secret file {path} is empty")
    return value

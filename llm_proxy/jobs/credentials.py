"""A passthrough job's own credential: kept in memory, or sealed with a key from llm_webhook_secret.

In passthrough mode a job must reach the provider with the client's own API key,
which the proxy never stores in clear. Without llm_webhook_secret it lives only
in this process's memory (a restart loses it: such a job then fails with an
error saying so). With the secret set it is also stored in the job's row,
AES-256-GCM encrypted under a key derived from the secret (HKDF-SHA256), with
the job id as associated data so a sealed credential cannot be moved to
another job. It is erased from the row when the job ends.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_INFO = b"llm-proxy job credentials v1"


@dataclass(frozen=True, slots=True)
class Credential:
    headers: tuple[tuple[str, str], ...]  # the client's key headers, as sent
    path: str | None = None  # the path with its key= parameter, when the key came that way

    def to_bytes(self) -> bytes:
        return json.dumps({"headers": [list(h) for h in self.headers], "path": self.path}).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Credential:
        raw = json.loads(data)
        return cls(tuple((str(n), str(v)) for n, v in raw["headers"]), raw.get("path"))


def _key(secret: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret.encode("utf-8"))


def seal(secret: str, job_id: str, credential: Credential) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(_key(secret)).encrypt(nonce, credential.to_bytes(), job_id.encode())


def unseal(secret: str, job_id: str, sealed: bytes) -> Credential | None:
    """The credential, or None if the secret changed (or the data is not ours)."""
    if not secret or len(sealed) < 13:
        return None
    try:
        return Credential.from_bytes(AESGCM(_key(secret)).decrypt(sealed[:12], sealed[12:], job_id.encode()))
    except (InvalidTag, ValueError, KeyError, TypeError):
        return None

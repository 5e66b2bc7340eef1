"""The state directory of one user on one machine (`--home` / PLUTO_HOME).

    identity      the 32-byte seed (mode 0600): everything the user owns derives from it
    device.key    this device's transport key (its peer id; not derived from the seed)
    config.json   coordinator address and volume settings
    cache/        local caches and the upload journal: safe to delete when unmounted and
                  `pluto status` shows nothing waiting to upload (else it holds the only copy)
    lock          held by the process writing this home (pluto_fs/home_lock.py); social.lock likewise
    salvaged/     what `pluto salvage` kept from a damaged journal
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptree.identity import UserKeys
from pluto_fs.errors import HomeError
from pluto_fs.store.packs import DEFAULT_HAPPY, DEFAULT_K, DEFAULT_N, happy_for
from transport.protocol.dial import parse_address
from transport.protocol.keys import load_or_create_key

DEFAULT_HOME = Path.home() / ".pluto"


def home_path(explicit: str | os.PathLike | None = None) -> Path:
    """`--home`, else $PLUTO_HOME, else ~/.pluto."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("PLUTO_HOME")
    return Path(env) if env else DEFAULT_HOME


@dataclass
class Config:
    """Settings kept in config.json."""

    coordinator: str = ""
    k: int = DEFAULT_K
    n: int = DEFAULT_N
    happy: int = DEFAULT_HAPPY  # fragments of each segment that must be placed before data counts as stored
    slot_replicas: int = 5
    request_timeout: float = 10.0
    audit_interval: float = 600.0  # seconds between background audit/repair rounds of a mount
    repair_margin: int = 2  # background repair when fewer than k + repair_margin fragments are healthy
    # Seconds a silent peer's fragments still count as there (docs/TRUST.md): 72 h, after
    # docs/SIMULATION.md; without it every night's shutdown would be repaired.
    repair_grace: float = 72 * 3600.0
    share_poll: float = 10.0  # seconds after which the mount reloads what others share with us
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Raise HomeError on any value that cannot work."""
        try:
            parse_address(self.coordinator)
        except ValueError as exc:
            raise HomeError(f"config: coordinator {exc}") from None
        if not (isinstance(self.k, int) and isinstance(self.n, int) and 1 <= self.k <= self.n <= 256):
            raise HomeError("config: k and n must be whole numbers with 1 <= k <= n <= 256")
        if not (isinstance(self.happy, int) and self.k <= self.happy <= self.n):
            raise HomeError("config: happy must be from k to n")
        if not (isinstance(self.slot_replicas, int) and 1 <= self.slot_replicas <= 64):
            raise HomeError("config: slot_replicas must be from 1 to 64")
        if not (isinstance(self.request_timeout, (int, float)) and 0.1 <= self.request_timeout <= 600):
            raise HomeError("config: request_timeout must be from 0.1 to 600 seconds")
        if not (isinstance(self.repair_margin, int) and 1 <= self.repair_margin <= self.n - self.k + 1):
            raise HomeError("config: repair_margin must be from 1 to n-k+1")
        if not (isinstance(self.share_poll, (int, float)) and 0.5 <= self.share_poll <= 86400):
            raise HomeError("config: share_poll must be from 0.5 to 86400 seconds")
        if not (isinstance(self.audit_interval, (int, float)) and 1 <= self.audit_interval <= 7 * 86400):
            raise HomeError("config: audit_interval must be from 1 second to 7 days")
        # bool is an int to Python, and NaN fails every comparison: both are refused here.
        if (isinstance(self.repair_grace, bool) or not isinstance(self.repair_grace, (int, float))
                or not 0 <= self.repair_grace <= 365 * 86400):
            raise HomeError("config: repair_grace must be a number of seconds from 0 to 31536000 (365 days)")


def code_config(coordinator: str, k: int = DEFAULT_K, n: int = DEFAULT_N) -> Config:
    """The config of a new home: `coordinator`, a k-of-n code, and the happy count that goes with it."""
    return Config(coordinator=coordinator, k=k, n=n, happy=happy_for(k, n))


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass
class Home:
    """An opened state directory."""

    path: Path

    @property
    def identity_path(self) -> Path:
        """Where the seed lives."""
        return self.path / "identity"

    @property
    def cache(self) -> Path:
        """Cache directory (created on demand)."""
        d = self.path / "cache"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def exists(self) -> bool:
        """True if an identity was created or restored here."""
        return self.identity_path.exists()

    def create(self, seed: bytes, config: Config) -> None:
        """Write a new identity and config; refuses to overwrite an existing identity."""
        config.validate()
        if self.exists():
            raise HomeError(f"{self.path} already holds an identity; use another --home or remove it first")
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        self.save_config(config)
        _write_private(self.identity_path, seed)

    def save_config(self, config: Config) -> None:
        """Write config.json atomically."""
        config.validate()
        _write_private(self.path / "config.json", json.dumps(asdict(config), indent=2).encode())

    def config(self) -> Config:
        """Read and validate config.json."""
        try:
            raw = json.loads((self.path / "config.json").read_text())
        except FileNotFoundError:
            raise HomeError(f"{self.path} has no config.json; run `pluto init` or `pluto restore`") from None
        except (OSError, ValueError) as exc:
            raise HomeError(f"{self.path}/config.json is unreadable ({exc}); fix or remove it") from None
        if not isinstance(raw, dict):
            raise HomeError(f"{self.path}/config.json must hold a JSON object")
        known = set(Config.__dataclass_fields__)
        config = Config(**{k: v for k, v in raw.items() if k in known})
        config.validate()
        return config

    def keys(self) -> UserKeys:
        """The user's keys, derived from the stored seed."""
        try:
            seed = self.identity_path.read_bytes()
        except FileNotFoundError:
            raise HomeError(f"no identity in {self.path}; run `pluto init` or `pluto restore`") from None
        if len(seed) != 32:
            raise HomeError(f"{self.identity_path} is damaged (not 32 bytes); restore from your recovery phrase")
        return UserKeys.from_seed(seed)

    def device_key(self) -> bytes:
        """This device's transport private key (created on first use)."""
        return bytes(load_or_create_key(self.path / "device.key"))

    def writer_tag(self) -> bytes:
        """This device's 8-byte tag in folder version vectors (cryptree/versions.py).

        Derived from the device's private transport key, so it is stable for
        the device, differs between devices restored from the same 24 words,
        and cannot be linked to the device's public peer id by anyone reading
        a folder.
        """
        import blake3

        return blake3.blake3(self.device_key(), derive_key_context="pluto 2026 writer tag v1").digest(8)

    def device_id(self) -> str:
        """This device's peer id (what `pluto serve --owner` takes)."""
        from nacl.public import PrivateKey

        from transport.protocol.peer_id import peer_id_text

        return peer_id_text(bytes(PrivateKey(self.device_key()).public_key))

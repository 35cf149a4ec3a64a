"""The one secret a cluster's components share, and everything derived from it.

Every internal hop is authenticated with a value derived from this secret, never the secret
itself: the gRPC token the router sends on each call to a worker, the Redis password of each
role (router, worker, admin), and the key that signs worker registrations. Deriving (HMAC-SHA256
with a purpose label) keeps each credential independent: a leaked Redis password or a captured
gRPC token does not reveal the secret or any other credential.

Where it comes from (built once at the CLI edge, see ``add_secret_arguments``): a file
(``--cluster-secret-file``, mode 0600; ``pdserve up`` generates one per run), the environment
(``PDSERVE_CLUSTER_SECRET``), or the command line (``--cluster-secret``; visible in ``ps``, so
for tests and quick trials). No secret means the component refuses to start unless told
``--insecure`` (then every hop is open, and it says so in its log).

Torch-free: the router imports it.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

ENV_VAR = "PDSERVE_CLUSTER_SECRET"
ENV_FILE_VAR = "PDSERVE_CLUSTER_SECRET_FILE"
MIN_SECRET_CHARS = 16  # shorter secrets are guessable offline from a captured token


@dataclass(frozen=True)
class ClusterSecret:
    value: str = field(repr=False)  # never printed: repr() shows only the fingerprint

    def __post_init__(self) -> None:
        if len(self.value) < MIN_SECRET_CHARS:
            raise ValueError(f"the cluster secret must have at least {MIN_SECRET_CHARS} "
                             f"characters (got {len(self.value)}); `pdserve secret` makes one")

    def derive(self, purpose: str) -> str:
        """A credential for one purpose (hex), independent of every other purpose's."""
        return hmac.new(self.value.encode(), b"pdserve/" + purpose.encode(),
                        hashlib.sha256).hexdigest()

    @property
    def grpc_token(self) -> str:
        return self.derive("grpc-token")

    def redis_password(self, role: str) -> str:
        return self.derive(f"redis-password/{role}")

    def sign(self, payload: bytes) -> str:
        """A registration's signature: only holders of the secret can make one."""
        return hmac.new(self.derive("registration-signing").encode(), payload,
                        hashlib.sha256).hexdigest()

    def verify(self, payload: bytes, signature: str) -> bool:
        return hmac.compare_digest(self.sign(payload), signature or "")

    @property
    def fingerprint(self) -> str:
        """Safe to log: tells two secrets apart without revealing either."""
        return self.derive("fingerprint")[:12]


def generate_secret() -> str:
    return secrets.token_urlsafe(32)


def write_secret_file(path: Path, value: str | None = None) -> Path:
    """Write a new (or the given) secret readable by this user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write((value or generate_secret()) + "\n")
    os.chmod(path, 0o600)  # also when the file already existed with wider rights
    return path


def read_secret_file(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"cluster secret file {path} does not exist")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise ValueError(f"cluster secret file {path} is readable by other users "
                         f"(mode {path.stat().st_mode & 0o777:o}); chmod 600 it")
    value = path.read_text().strip()
    if not value:
        raise ValueError(f"cluster secret file {path} is empty")
    return value


def add_secret_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("cluster authentication")
    g.add_argument("--cluster-secret-file", default=os.environ.get(ENV_FILE_VAR),
                   help="file holding the cluster secret (mode 600), shared by the router, the "
                        f"workers and Redis's ACL; env {ENV_FILE_VAR}. `pdserve up` makes one")
    g.add_argument("--cluster-secret", default=os.environ.get(ENV_VAR),
                   help=f"the cluster secret itself (env {ENV_VAR}; on the command line it "
                        "shows in `ps`: prefer the file)")
    g.add_argument("--insecure", action="store_true",
                   help="run without a cluster secret: internal gRPC and Redis unauthenticated "
                        "(only on a network you trust completely)")


def secret_from_args(args: argparse.Namespace, component: str) -> ClusterSecret | None:
    """The secret the flags name; None only with --insecure. Raises ValueError otherwise."""
    if args.cluster_secret_file:
        return ClusterSecret(read_secret_file(args.cluster_secret_file))
    if args.cluster_secret:
        return ClusterSecret(args.cluster_secret)
    if args.insecure:
        return None
    raise ValueError(
        f"{component} needs the cluster secret: --cluster-secret-file FILE, or "
        f"{ENV_VAR}=... (`pdserve secret > FILE` makes one; `pdserve up` handles it itself), "
        f"or --insecure to leave the internal ports unauthenticated")

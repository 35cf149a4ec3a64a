"""Redis users per role, with passwords derived from the cluster secret.

Three roles, each allowed only what its code does (common/redis_schema.py lists the keys):
- ``worker``: writes its record, the worker set, its KV-event stream and snapshot; reads none
  of the control hash (a worker cannot change how many workers run).
- ``router``: reads the registry, the streams and the snapshots; writes nothing.
- ``admin``: the launcher, ``pdserve scale`` and ``pdserve status``: the control hash too.
The ``default`` user is switched off, so a connection without credentials can do nothing.

Every worker shares the ``worker`` user: with one cluster secret a worker could derive any
other worker's password anyway, so per-worker users would add bookkeeping, not protection.
What stops a forged record from a holder of Redis credentials that are not the secret (an
externally managed Redis) is the signature the router checks (router/registry.py).

Torch-free: the router imports it.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

from common.cluster_secret import ClusterSecret

ROUTER, WORKER, ADMIN = "router", "worker", "admin"
ROLES = (ROUTER, WORKER, ADMIN)

# Commands every client needs to connect and be told why it was refused.
# (redis-py also tries CLIENT SETINFO, and ignores the refusal: not granted, so Redis 7.0 works.)
_CONNECT = "+ping +hello +auth +client|setname +select"


def _rules(role: str, prefix: str) -> str:
    p = prefix
    if role == WORKER:
        keys = f"~{p}workers ~{p}worker:* ~{p}kv_events:* ~{p}kv_snapshot:*"
        commands = "+set +get +del +expire +pexpire +sadd +srem +xadd +xtrim +multi +exec"
    elif role == ROUTER:
        keys = f"~{p}*"  # with read commands only (%R~ needs Redis 7)
        commands = "+get +mget +smembers +xread +xrange +xrevrange +xinfo|stream +exists"
    elif role == ADMIN:
        keys = f"~{p}*"
        commands = ("+@read +@write +@keyspace +@hash +@set +@stream +multi +exec "
                    "-flushall -flushdb -debug")
    else:
        raise ValueError(f"unknown Redis role {role!r}; roles: {', '.join(ROLES)}")
    return f"{keys} resetchannels {_CONNECT} {commands}"


def username(role: str) -> str:
    return f"pdserve-{role}"


def acl_rules(secret: ClusterSecret, prefix: str) -> list[list[str]]:
    """``ACL SETUSER`` argument lists, one per role, then the default user switched off."""
    users = [[username(role), "reset", "on", f">{secret.redis_password(role)}",
              *_rules(role, prefix).split()] for role in ROLES]
    return users + [["default", "reset", "off"]]


def acl_file_text(secret: ClusterSecret, prefix: str) -> str:
    """The same users as a Redis ACL file (``redis-server --aclfile``): locked from the start."""
    return "".join("user " + " ".join(rule) + "\n" for rule in acl_rules(secret, prefix))


def url_for_role(url: str, secret: ClusterSecret | None, role: str) -> str:
    """``url`` with the role's credentials, unless it names its own (an externally provisioned
    Redis) or the cluster runs without a secret."""
    parts = urlsplit(url)
    if secret is None or parts.username or parts.password or parts.scheme == "unix":
        return url
    creds = f"{quote(username(role))}:{quote(secret.redis_password(role))}@"
    # protocol=2: authenticate with AUTH, which every server takes (the embedded fakeredis
    # refuses credentials that come in a RESP3 HELLO); our code reads RESP2 replies anyway.
    query = "&".join(q for q in (parts.query, "protocol=2") if q)
    return urlunsplit(parts._replace(netloc=creds + parts.netloc, query=query))


def redacted(url: str) -> str:
    """``url`` safe to log (the password replaced)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))

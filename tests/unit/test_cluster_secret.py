"""The cluster secret and what is derived from it (issue 17): independent credentials per
purpose, signatures that bind every field of a worker record, secret files readable by their
owner only, the flags' rules, Redis URLs per role, and the rate limiter's buckets."""

import argparse
import os

import pytest

from common.cluster_secret import (
    ClusterSecret,
    add_secret_arguments,
    read_secret_file,
    secret_from_args,
    write_secret_file,
)
from common.redis_acl import ADMIN, ROUTER, WORKER, acl_file_text, redacted, url_for_role
from common.redis_schema import WorkerRecord

SECRET = ClusterSecret("s" * 32)


def test_derived_credentials_are_independent_and_hide_the_secret():
    creds = {SECRET.grpc_token, SECRET.redis_password(ROUTER), SECRET.redis_password(WORKER),
             SECRET.redis_password(ADMIN), SECRET.fingerprint}
    assert len(creds) == 5 and not any(SECRET.value in c for c in creds)
    assert ClusterSecret("t" * 32).grpc_token != SECRET.grpc_token
    assert SECRET.value not in repr(SECRET)
    with pytest.raises(ValueError, match="at least 16"):
        ClusterSecret("short")


def test_a_signed_record_verifies_and_any_change_breaks_it():
    record = WorkerRecord(worker_id="d1", role="decode", address="10.0.0.5:5000", model="m",
                          compat_digest="c", tp_size=1, block_size=16, num_blocks=8).signed(SECRET)
    assert record.signature and record.verified_by(SECRET)
    assert WorkerRecord.from_json(record.to_json()).verified_by(SECRET)  # through Redis
    moved = WorkerRecord(**{**record.__dict__, "address": "10.0.0.66:5000"})
    assert not moved.verified_by(SECRET)
    assert not record.verified_by(ClusterSecret("x" * 32))
    assert not WorkerRecord(**{**record.__dict__, "signature": ""}).verified_by(SECRET)
    assert record.signed(None) is record  # --insecure: nothing to sign with


def test_secret_files(tmp_path):
    path = write_secret_file(tmp_path / "c.secret")
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(read_secret_file(path)) >= 32
    os.chmod(path, 0o644)
    with pytest.raises(ValueError, match="readable by other users"):
        read_secret_file(path)
    with pytest.raises(ValueError, match="does not exist"):
        read_secret_file(tmp_path / "missing")


def _args(*argv: str, env: dict | None = None) -> argparse.Namespace:
    old = {k: os.environ.pop(k, None) for k in ("PDSERVE_CLUSTER_SECRET",
                                                 "PDSERVE_CLUSTER_SECRET_FILE")}
    os.environ.update(env or {})
    try:
        parser = argparse.ArgumentParser()
        add_secret_arguments(parser)
        return parser.parse_args(argv)
    finally:
        for k in ("PDSERVE_CLUSTER_SECRET", "PDSERVE_CLUSTER_SECRET_FILE"):
            os.environ.pop(k, None)
        os.environ.update({k: v for k, v in old.items() if v is not None})


def test_a_component_without_a_secret_refuses_to_start_unless_insecure(tmp_path):
    with pytest.raises(ValueError, match="needs the cluster secret"):
        secret_from_args(_args(), "pdserve decode")
    assert secret_from_args(_args("--insecure"), "pdserve decode") is None
    assert secret_from_args(_args(env={"PDSERVE_CLUSTER_SECRET": "e" * 20}), "x").value == "e" * 20
    path = write_secret_file(tmp_path / "f.secret", "f" * 20)
    assert secret_from_args(_args("--cluster-secret-file", str(path)), "x").value == "f" * 20


def test_redis_urls_per_role():
    url = url_for_role("redis://10.0.0.1:6379/0", SECRET, WORKER)
    assert url.startswith("redis://pdserve-worker:") and url.endswith("@10.0.0.1:6379/0?protocol=2")
    assert SECRET.redis_password(WORKER) in url and SECRET.redis_password(WORKER) not in redacted(url)
    given = "redis://app:pw@10.0.0.1:6379/0"  # an externally provisioned user is used as given
    assert url_for_role(given, SECRET, WORKER) == given
    assert url_for_role("redis://h:1/0", None, WORKER) == "redis://h:1/0"


def test_the_acl_file_names_every_role_and_switches_the_default_user_off():
    text = acl_file_text(SECRET, "pdserve:")
    lines = text.splitlines()
    assert [line.split()[1] for line in lines] == ["pdserve-router", "pdserve-worker",
                                                   "pdserve-admin", "default"]
    assert lines[-1] == "user default reset off"
    worker = lines[1]
    assert "~pdserve:control" not in worker and "~pdserve:worker:*" in worker
    router = lines[0]
    assert "+set" not in router.split() and "+xread" in router.split()
    assert SECRET.redis_password(ROUTER) in router  # ">password" form, read by redis-server


def test_rate_limiter_buckets(monkeypatch):
    from router import rate_limit
    from router.errors import APIError

    now = [1000.0]
    monkeypatch.setattr(rate_limit.time, "monotonic", lambda: now[0])
    limiter = rate_limit.KeyRateLimiter(rate_limit.RateLimits(requests_per_s=2, tokens_per_s=10,
                                                              burst_s=1))
    limiter.admit("a")
    limiter.admit("a")  # a burst of two
    with pytest.raises(APIError) as refused:
        limiter.admit("a")
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "1"
    limiter.admit("b")  # keys do not share budgets
    now[0] += 0.5
    limiter.admit("a")  # one more after half a second at 2/s
    limiter.charge("a", 35)  # 10 in the bucket, 25 in debt
    now[0] += 1.0
    with pytest.raises(APIError) as in_debt:
        limiter.admit("a")
    assert "tokens/s" in in_debt.value.message and in_debt.value.headers["Retry-After"] == "2"
    now[0] += 1.6
    limiter.admit("a")
    assert rate_limit.RateLimits(4, 100).per_process(2) == rate_limit.RateLimits(2, 50)

"""`pdserve secret`: make a cluster secret, or the Redis ACL file that goes with one.

    pdserve secret --out cluster.secret          # a new secret, mode 600
    pdserve secret --acl --cluster-secret-file cluster.secret > users.acl
                                                 # for redis-server --aclfile users.acl

`pdserve up` and `pdserve ray up` make their own; this is for Compose, Kubernetes and clusters
started component by component.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import defaults


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from common.cluster_secret import add_secret_arguments

    parser.add_argument("--out", type=Path, default=None,
                        help="write a new secret to this file (mode 600) instead of printing it")
    parser.add_argument("--if-missing", action="store_true",
                        help="with --out: keep the file if it exists (for init containers)")
    parser.add_argument("--acl", action="store_true",
                        help="print the Redis ACL file of the secret given by "
                             "--cluster-secret-file / PDSERVE_CLUSTER_SECRET instead")
    parser.add_argument("--acl-out", type=Path, default=None,
                        help="with --out or a given secret: also write the ACL file here")
    parser.add_argument("--redis-prefix", default=defaults.REDIS_KEY_PREFIX,
                        help="the cluster's Redis key prefix (the ACL rules name it)")
    add_secret_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from common.cluster_secret import (
        ClusterSecret,
        generate_secret,
        read_secret_file,
        secret_from_args,
        write_secret_file,
    )
    from common.redis_acl import acl_file_text

    if args.out is not None:
        if not (args.if_missing and args.out.exists()):
            write_secret_file(args.out)
            print(f"[pdserve] wrote a new cluster secret to {args.out}", file=sys.stderr)
        secret = ClusterSecret(read_secret_file(args.out))
    elif args.acl or args.acl_out:
        secret = secret_from_args(args, "pdserve secret --acl")
        if secret is None:
            raise ValueError("--acl needs a secret (--insecure has none)")
    else:
        print(generate_secret())
        return 0
    text = acl_file_text(secret, args.redis_prefix)
    if args.acl_out is not None:
        write_secret_file(args.acl_out, text.rstrip("\n"))  # mode 600: it holds passwords
    elif args.acl:
        sys.stdout.write(text)
    return 0

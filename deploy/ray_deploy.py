"""Deploy, resize, inspect and remove a pdserve cluster on an existing Ray cluster."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from common.cluster_secret import ENV_VAR, generate_secret
from deploy.ray_actors import NAMESPACE, ComponentActor, RedisActor, wait_until

ROUTER, REDIS = "pdserve-router", "pdserve-redis"
CONFIG_KEY = "pdserve-config"


@dataclass(frozen=True)
class RaySpec:
    model: str = "demo"
    decode_tp: int = 1
    gpus_per_rank: float = 0.0  # 1 on GPU clusters; 0 runs on CPU nodes
    router_port: int = 8000
    redis_url: str | None = None
    policy: str = "kv_aware"
    router_processes: int = 1  # the router's --workers: processes of the router actor's node
    worker_args: tuple[str, ...] = ()
    advertise_host: str | None = None  # force component addresses (single-node: 127.0.0.1)
    cluster_secret: str | None = None  # None: a new one for this deployment
    # Placement across nodes: a custom Ray resource per pool (`ray start --resources
    # '{"pdserve_decode": 4}'`); each worker (each TP gang) takes one unit, so a node offering
    # K units hosts at most K of that pool's workers. None: anywhere Ray finds room.
    prefill_resource: str | None = None
    decode_resource: str | None = None
    router_resource: str | None = None  # the router (and the Redis actor) go where this is


class PlacementError(RuntimeError):
    """The Ray cluster cannot hold what was asked (a pool resource no node offers, too few
    units): said before anything starts, instead of actors pending until a timeout."""


def check_placement(pools: dict[str, tuple[str | None, int]]) -> None:
    """``pools``: role -> (its resource, units asked). Every named resource exists on the
    cluster with that many units."""
    total = ray.cluster_resources()
    for role, (name, count) in pools.items():
        if name is None or count == 0:
            continue
        have = total.get(name, 0)
        if have == 0:
            raise PlacementError(
                f"no Ray node offers the resource {name!r} for the {role} pool: start the "
                f"nodes meant for it with `ray start ... --resources '{{\"{name}\": N}}'`")
        if have < count:
            raise PlacementError(f"the {role} pool asks for {count} workers but the cluster "
                                 f"offers {have:g} units of {name!r} (one per worker)")


def connect(address: str | None) -> None:
    ray.init(address=address or "auto", namespace=NAMESPACE, log_to_driver=False,
             ignore_reinit_error=True)


def _actor(name: str):
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None


def worker_names(role: str) -> list[str]:
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == NAMESPACE and a["name"].startswith(f"pdserve-{role}-")]
    return sorted(names, key=lambda n: int(n.rsplit("-", 1)[1]))


def router_url() -> str:
    router = _actor(ROUTER)
    if router is None:
        raise RuntimeError("no pdserve deployment on this Ray cluster (run `pdserve ray up`)")
    info = ray.get(router.info.remote())
    config = ray.get(_actor(CONFIG_KEY).get.remote())
    return f"http://{config['advertise_host'] or info['node_ip']}:{config['router_port']}"


@ray.remote(num_cpus=0)
class ConfigActor:
    """Holds the deployment spec so later commands (scale) start identical workers."""

    def __init__(self, spec: dict):
        self.spec = spec

    def get(self) -> dict:
        return self.spec


def up(spec: RaySpec, prefill: int, decode: int, log=print, timeout_s: float = 600) -> str:
    if _actor(ROUTER) is not None:
        raise RuntimeError("a pdserve deployment already runs here: `pdserve ray down` first")
    check_placement({"prefill": (spec.prefill_resource, prefill),
                     "decode": (spec.decode_resource, decode),
                     "router": (spec.router_resource, 1)})
    redis_url = spec.redis_url
    # One secret per deployment, kept by the config actor (whoever can reach Ray's API controls
    # the cluster anyway) and handed to each component in its environment, not its argv.
    secret = spec.cluster_secret or generate_secret()
    # The router and the Redis actor share one unit of the router's resource: one node.
    beside_router = _resource_options(spec.router_resource, units=0.5)
    if redis_url is None:
        redis = RedisActor.options(name=REDIS, lifetime="detached", **beside_router).remote(secret)
        redis_url = ray.get(redis.url.remote(spec.advertise_host))
    config = dict(spec.__dict__, redis_url=redis_url, worker_args=list(spec.worker_args),
                  cluster_secret=secret)
    ConfigActor.options(name=CONFIG_KEY, lifetime="detached").remote(config)
    log(f"[pdserve] redis: {redis_url}")
    if spec.model == "demo":  # prepared once by a task, not raced by every worker
        ray.get(_prepare_demo.remote())
    ComponentActor.options(name=ROUTER, lifetime="detached", **beside_router).remote(
        ROUTER, ["router", "--host", "0.0.0.0", "--port", str(spec.router_port), "--redis",
                 redis_url, "--model", spec.model, "--policy", spec.policy,
                 "--workers", str(spec.router_processes)], _secret_env(config))
    scale(prefill, decode, log=log, wait=False)
    url = router_url()
    wait_for_pools(url, prefill, decode, timeout_s, log)
    return url


@ray.remote(num_cpus=0)
def _prepare_demo() -> str:
    from common.paths import default_cache_dir
    from engine.model.loaders.demo_model import prepare_demo_model

    return str(prepare_demo_model(default_cache_dir(), quiet=True))


def _start_worker(role: str, index: int, config: dict) -> None:
    name = f"pdserve-{role}-{index}"
    tp = config["decode_tp"] if role == "decode" else 1
    gpus = config["gpus_per_rank"] * tp
    args = [role, "--host", "0.0.0.0", "--advertise-host", config["advertise_host"] or "{node_ip}",
            "--redis", config["redis_url"], "--model",
            config["model"], "--worker-id", name, *config["worker_args"]]
    if tp > 1:
        args += ["--tp", str(tp)]
    options = dict(name=name, lifetime="detached")
    pool = config.get(f"{role}_resource")
    if gpus:
        # One bundle of all the gang's GPUs on one node: TP ranks talk over NVLink/NCCL. The
        # pool's unit is in the bundle too, so the gang lands on a node of its pool.
        bundle = {"GPU": gpus, "CPU": 0.001, **({pool: 1} if pool else {})}
        pg = placement_group([bundle], strategy="STRICT_PACK", name=f"{name}-pg",
                             lifetime="detached")
        ray.get(pg.ready())
        options.update(num_gpus=gpus, **_resource_options(pool),
                       scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=pg))
    else:
        options.update(_resource_options(pool))
    ComponentActor.options(**options).remote(name, args, _secret_env(config))


def _resource_options(name: str | None, units: float = 1) -> dict:
    return {"resources": {name: units}} if name else {}


def _secret_env(config: dict) -> dict[str, str]:
    return {ENV_VAR: config["cluster_secret"]}


def scale(prefill: int | None, decode: int | None, log=print, wait: bool = True,
          timeout_s: float = 600) -> None:
    config = ray.get(_actor(CONFIG_KEY).get.remote())
    draining = []
    for role, target in (("prefill", prefill), ("decode", decode)):
        if target is None:
            continue
        names = worker_names(role)
        next_index = max([int(n.rsplit("-", 1)[1]) for n in names], default=0) + 1
        pool = config.get(f"{role}_resource")
        if target > len(names):
            check_placement({role: (pool, target)})
        where = f" (on a node offering {pool!r})" if pool else ""
        for i in range(target - len(names)):
            _start_worker(role, next_index + i, config)
            log(f"[pdserve] {role}: starting pdserve-{role}-{next_index + i}{where}")
        for name in names[target:] if target < len(names) else []:
            log(f"[pdserve] {role}: draining {name}")
            draining.append((name, _actor(name).drain.remote()))
    for name, done in draining:  # drained workers finished their requests: now remove them
        ray.get(done)
        _remove(name)
    if wait and (prefill is not None or decode is not None):
        current = {r: len(worker_names(r)) for r in ("prefill", "decode")}
        wait_for_pools(router_url(), current["prefill"], current["decode"], timeout_s, log)


def _remove(name: str) -> None:
    actor = _actor(name)
    if actor is not None:
        ray.kill(actor)
    try:
        remove_placement_group(ray.util.get_placement_group(f"{name}-pg"))
    except Exception:
        pass  # CPU workers have no placement group


def wait_for_pools(url: str, prefill: int, decode: int, timeout_s: float, log) -> None:
    def ready() -> bool:
        try:
            pools = httpx.get(f"{url}/v1/cluster", timeout=2).json()["pools"]
            # With decode workers asked for, the router must also say it can serve (/ready).
            serving = decode == 0 or httpx.get(f"{url}/ready", timeout=2).status_code == 200
        except (httpx.HTTPError, ValueError, KeyError):
            return False
        return pools == {"prefill": prefill, "decode": decode} and serving

    log(f"[pdserve] waiting for prefill={prefill} decode={decode} at {url}")
    wait_until(ready, timeout_s, f"the pools to reach prefill={prefill} decode={decode}")


def down(log=print) -> None:
    names = worker_names("prefill") + worker_names("decode")
    pending = [(n, _actor(n).drain.remote()) for n in names if _actor(n) is not None]
    for name, done in pending:
        ray.get(done)
        _remove(name)
        log(f"[pdserve] removed {name}")
    for name in (ROUTER, REDIS, CONFIG_KEY):
        actor = _actor(name)
        if actor is None:
            continue
        if name == ROUTER:
            ray.get(actor.drain.remote(timeout_s=15))
        elif name == REDIS:
            ray.get(actor.stop.remote())
        ray.kill(actor)
        log(f"[pdserve] removed {name}")
    time.sleep(0.5)


def remaining_actors() -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == NAMESPACE]

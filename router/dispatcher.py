"""One request through the cluster: route, prefill (with retries), hand over, decode (with
migration), streaming token events back to the API layer.

Failure rules: a prefill that fails before the first token is retried on another prefill worker
and finally on the decode worker itself; a decode stream that dies is continued elsewhere by
prefilling prompt + the tokens already generated, so the client sees one unbroken stream. A
client that goes away cancels the prefill call, or Aborts the request on its decode worker.
Decode outputs arrive per engine step, for all of this router's requests on a worker at once,
on that worker's Outputs stream (router/worker_streams.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from itertools import count

import grpc

from common.redis_schema import WorkerRecord
from kv_transfer.block_hash import BlockHasher
from kv_transfer.block_hash_memo import BlockHashMemo
from proto import API_VERSION, pb
from proto.convert import logprob_from_pb, sampling_to_pb
from router.config import RouterConfig
from router.dispatch_errors import BadRequestError, NoWorkersError, UpstreamError
from router.generate_request import GenerateRequest
from router.index_accuracy import IndexAccuracy
from router.load_tracker import LoadTracker
from router.metrics import RouterMetrics
from router.policies import (
    Candidate,
    choose_decode,
    choose_migration_target,
    choose_prefill,
    local_prefill_reason,
    prefill_saturated,
)
from router.prefix_index import PrefixIndex
from router.registry import RegistryView
from router.request_record import CANCELLED, ERROR, REJECTED, RequestRecord
from router.token_events import TokenEvent, merge_outputs
from router.worker_abort import abort_later
from router.worker_clients import WorkerClients
from router.worker_streams import CallRefused, OutputsLost, WorkerStreams

log = logging.getLogger(__name__)

# A worker refusing a call with these (by status code name) refuses the client's request.
_CLIENT_CODES = {grpc.StatusCode.INVALID_ARGUMENT.name, grpc.StatusCode.OUT_OF_RANGE.name}
_SUBMIT_TIMEOUT_S = 30.0  # Submit only checks and queues the request: a worker this slow is stuck




@dataclass
class RoutePlan:
    decode: WorkerRecord
    prefill: Candidate | None  # None: prefill on the decode worker
    prefill_candidates: list[Candidate]
    predicted_cached_tokens: int
    local_reason: str | None


class _DecodeFailed(Exception):
    pass



class Dispatcher:
    def __init__(self, config: RouterConfig, registry: RegistryView, index: PrefixIndex,
                 clients: WorkerClients, metrics: RouterMetrics, load: LoadTracker):
        self.config = config
        self.registry = registry
        self.index = index
        self.clients = clients
        self.metrics = metrics
        self.load = load
        self.hasher = BlockHasher(config.block_size, config.hash_seed)
        self._hash_memo = BlockHashMemo()  # system prompts and earlier turns recur
        self.outputs = WorkerStreams(clients.stub, (metrics.decode_output_batches,
                                                    metrics.decode_output_tokens),
                                     token=clients.token)
        self.accuracy = IndexAccuracy()
        # Turns for round robin and tie breaks, one per kind of choice: a request that takes a
        # prefill turn too (its retry loop) must not shift the next request's decode turn, or
        # with 2 workers every request lands on the same one.
        self._decode_turn = count()
        self._prefill_turn = count()
        self._rng = random.Random(0)
        self._prompt_total = 0
        self._cached_total = 0
        self.placements: dict[str, str] = {}  # request id -> its decode worker, while it runs

    # -- routing ------------------------------------------------------------------------------
    def plan(self, req: GenerateRequest) -> RoutePlan:
        started = time.perf_counter()
        decodes = self.registry.live("decode")
        pinned = [r for r in decodes if r.worker_id == req.decode_worker_id]
        decodes = pinned or decodes
        if not decodes:
            raise NoWorkersError("no decode worker is available")
        chosen_decode = choose_decode(self._decode_candidates(decodes), self.config.weights,
                                      next(self._decode_turn))
        decode = next(r for r in decodes if r.worker_id == chosen_decode.worker_id)
        prefills = [r for r in self.registry.live("prefill")
                    if r.role == "prefill" and r.compat_digest == decode.compat_digest]
        prompt_len = len(req.prompt_token_ids)
        bs = self.config.block_size
        hashes = self.hasher.hash_prompt(req.prompt_token_ids[: prompt_len - 1], req.cache_salt,
                                         memo=self._hash_memo)
        # Decode workers publish KV events too: the index knows what the chosen one holds.
        overlaps = self.index.overlap(hashes, [r.worker_id for r in prefills]
                                      + [decode.worker_id])
        cached_here = overlaps[decode.worker_id] * bs
        candidates = [Candidate(r.worker_id, cached_tokens=overlaps[r.worker_id] * bs,
                                queued_tokens=self.load.prefill_tokens[r.worker_id])
                      for r in prefills]
        chosen = None
        predicted = 0
        if candidates:
            chosen = choose_prefill(self.config.policy, candidates, prompt_len,
                                    self.config.weights, next(self._prefill_turn), self._rng)
            predicted = chosen.cached_tokens
        saturated = prefill_saturated(candidates, self.config.prefill_saturation_tokens)
        local_reason = local_prefill_reason(prompt_len, cached_here, predicted,
                                            self.config.local_prefill_threshold_tokens,
                                            len(candidates), saturated, self.config.weights)
        local_reason = "n_choice" if pinned else local_reason
        if local_reason:
            predicted = cached_here
        self.metrics.routing_seconds.observe(time.perf_counter() - started)
        return RoutePlan(decode, None if local_reason else chosen, candidates, predicted,
                         local_reason)

    def _decode_candidates(self, records: list[WorkerRecord]) -> list[Candidate]:
        # Streams this router has in flight there, plus the worker's own queue (heartbeat).
        return [Candidate(r.worker_id, running=self.load.decode_streams[r.worker_id]
                          + r.num_waiting, kv_usage=r.kv_usage) for r in records]

    # -- one request --------------------------------------------------------------------------
    async def generate(self, req: GenerateRequest) -> AsyncIterator[TokenEvent]:
        # Every event goes through record.on_event before its yield, so the outcome and the
        # latencies are settled before a consumer that stops at the finish reason closes us.
        record = RequestRecord(req.request_id, len(req.prompt_token_ids),
                               on_close=req.on_finish)
        try:
            plan = self.plan(req)
            record.decode_worker = self.placements[req.request_id] = plan.decode.worker_id
            first = None
            if plan.prefill is not None:
                first = await self._prefill(req, plan)
            else:
                self.metrics.local_prefills.labels(plan.local_reason).inc()
            if first is not None:
                record.prefill_worker = plan.prefill.worker_id
                event = TokenEvent([first.first_token], first.text,
                                   [logprob_from_pb(first.first_logprob)]
                                   if first.HasField("first_logprob") else [],
                                   first.finish_reason or None, first.num_prompt_tokens,
                                   first.num_cached_tokens)
                handed_over = False
                try:
                    record.on_event(self.metrics, event.token_ids, event.num_cached_tokens,
                                    event.finish_reason)
                    yield event
                    if first.finish_reason:
                        return
                    decode_stream = self._decode(req, plan, first)
                    handed_over = True
                finally:
                    if not handed_over and not first.finish_reason:
                        # The client left between prefill and decode: free the held blocks now.
                        self._abort_prefill(plan, req.request_id)
            else:
                decode_stream = self._decode(req, plan, None)
            # Closed explicitly: a client that leaves mid-stream must end the gRPC call and
            # the decode-load count now, not when the garbage collector gets to the generator.
            async with contextlib.aclosing(decode_stream):
                async for event in decode_stream:
                    record.on_event(self.metrics, event.token_ids, event.num_cached_tokens,
                                    event.finish_reason)
                    yield event
        except (asyncio.CancelledError, GeneratorExit):
            record.interrupted(CANCELLED)
            raise
        except (BadRequestError, NoWorkersError):
            record.interrupted(REJECTED)
            raise
        except BaseException:
            record.interrupted(ERROR)
            raise
        finally:
            self.placements.pop(req.request_id, None)
            record.close(self.metrics, self.config.policy)

    async def _prefill(self, req: GenerateRequest, plan: RoutePlan) -> pb.PrefillResponse | None:
        """Remote prefill with retries; None means fall back to prefilling on the decode side."""
        chosen = plan.prefill
        tried: set[str] = set()
        while chosen is not None:
            record = self.registry.workers.get(chosen.worker_id)
            if record is None:
                tried.add(chosen.worker_id)
            else:
                uncached = len(req.prompt_token_ids) - chosen.cached_tokens
                try:
                    with self.load.prefilling(chosen.worker_id, uncached):
                        response = await self.outputs.prefill(
                            record.address, record.outputs_address, pb.PrefillRequest(
                                api_version=API_VERSION, request_id=req.request_id,
                                prompt_token_ids=req.prompt_token_ids,
                                sampling=sampling_to_pb(req.params),
                                cache_salt=list(req.cache_salt)),
                            self.config.prefill_timeout_s)
                    self._account_cache(chosen.cached_tokens, response)
                    self._count_prompt(len(req.prompt_token_ids), response.num_cached_tokens)
                    plan.prefill = chosen
                    return response
                except asyncio.CancelledError:
                    # The client left mid-prefill. The worker aborts a cancelled call itself,
                    # but a response already on its way would leave the KV held: drop it.
                    self._abort_later([record], req.request_id)
                    raise
                except CallRefused as e:
                    if e.code in _CLIENT_CODES:
                        raise BadRequestError(e.details) from None
                    # A timeout can fire after the worker took the lease: nobody will pull it.
                    self._abort_later([record], req.request_id)
                    log.warning("prefill on %s failed (%s); retrying elsewhere",
                                chosen.worker_id, e)
                    self.registry.fence(chosen.worker_id, self.config.fence_s)
                    self.metrics.retries.inc()
                    tried.add(chosen.worker_id)
            remaining = [c for c in plan.prefill_candidates if c.worker_id not in tried
                         and not self.registry.is_fenced(c.worker_id)]
            if not remaining or len(tried) >= self.config.max_prefill_attempts:
                break
            chosen = choose_prefill(self.config.policy, remaining, len(req.prompt_token_ids),
                                    self.config.weights, next(self._prefill_turn), self._rng)
        self.metrics.local_prefills.labels("prefill_failed").inc()
        plan.prefill = None  # no prefill worker holds anything for this request
        return None

    def _account_cache(self, predicted: int, response: pb.PrefillResponse) -> None:
        realised = response.num_cached_tokens
        self.metrics.predicted_cached_tokens.inc(predicted)
        self.metrics.prediction_error.observe(predicted - realised)
        self.accuracy.record(predicted, realised)
        self.metrics.index_accuracy.set(self.accuracy.exact_share)

    def _abort_prefill(self, plan: RoutePlan, request_id: str,
                       decode_first: WorkerRecord | None = None) -> None:
        """Free the KV the prefill worker holds for ``request_id``: nobody will pull it.

        With ``decode_first``, that decode worker is told to drop the request before the owner
        frees the blocks, so a pull it may still have in flight is discarded there rather than
        reading blocks the owner is already reusing. Abort is idempotent on both sides.
        """
        owner = self.registry.workers.get(plan.prefill.worker_id) if plan.prefill else None
        if owner is not None:
            self._abort_later([r for r in (decode_first, owner) if r is not None], request_id)

    def _abort_later(self, records: list[WorkerRecord], request_id: str) -> None:
        abort_later(self.clients, records, request_id)  # router/worker_abort.py

    async def _decode(self, req: GenerateRequest, plan: RoutePlan,
                      first: pb.PrefillResponse | None) -> AsyncIterator[TokenEvent]:
        generated: list[int] = [first.first_token] if first is not None else []
        decode = plan.decode
        failed: set[str] = set()
        migrations = 0
        cached_reported = first is not None
        while True:
            remote = first is not None and not failed  # only a first attempt pulls KV
            remaining_tokens = req.params.max_tokens - len(generated)
            if remaining_tokens <= 0:
                yield TokenEvent([], finish_reason="length")
                return
            request = pb.DecodeRequest(api_version=API_VERSION, request_id=req.request_id,
                                       sampling=sampling_to_pb(req.params),
                                       cache_salt=list(req.cache_salt))
            if remote:
                request.prompt_token_ids.extend(req.prompt_token_ids)
                request.pull_kv.first_token = first.first_token
                request.pull_kv.kv_handle.CopyFrom(first.kv_handle)
                if first.HasField("first_logprob"):
                    request.pull_kv.first_logprob.CopyFrom(first.first_logprob)
            else:
                request.prefill_here.SetInParent()
                request.prompt_token_ids.extend(req.prompt_token_ids + generated)
                request.sampling.max_tokens = remaining_tokens
                # The generated tokens ride in the prompt: a grammar replays them there.
                request.num_generated_tokens = len(generated)
                request.sampling.min_tokens = max(req.params.min_tokens - len(generated), 0)
            request.router_id = self.outputs.router_id
            # Until a token comes back, the prefill worker still holds the prompt KV for this
            # attempt; any way out of it before then (a refusal, an error, a dead worker, the
            # client leaving) must free that KV, or it stays held to the lease's end.
            handoff_open = remote
            decode_ended_it = False  # an error output: the worker already dropped the request
            finished = False
            inbox = None
            try:
                with self.load.decoding(decode.worker_id):
                    # Subscribed before Submit: the first outputs may beat Submit's answer.
                    inbox = await self.outputs.subscribe(decode.address, req.request_id,
                                                         decode.outputs_address)
                    await self.outputs.submit(decode.address, request, _SUBMIT_TIMEOUT_S)
                    deadline = asyncio.get_running_loop().time() + self.config.request_timeout_s
                    while True:
                        event, error = merge_outputs(await inbox.take(deadline))
                        if event.token_ids or event.finish_reason:
                            handoff_open = False  # a token means the pull is complete
                            generated.extend(event.token_ids)
                            if not cached_reported:
                                cached_reported = True
                                self._count_prompt(len(req.prompt_token_ids),
                                                   event.num_cached_tokens)
                            else:
                                event.num_cached_tokens = 0
                            finished = event.finish_reason is not None
                            yield event
                            if finished:
                                return
                        if error is not None:
                            raise _DecodeFailed(error)
            except CallRefused as e:  # the worker did not take it (it is alive)
                if e.code in _CLIENT_CODES:
                    raise BadRequestError(e.details) from None
                reason = str(e)
            except OutputsLost as e:
                reason = str(e)
            except _DecodeFailed as e:
                # The worker answered: it is alive, only this request failed there (typically
                # its KV pull: the owner died, or the lease ran out while the worker was
                # backlogged). Continue on the same worker by prefilling there.
                decode_ended_it = True  # (and the retry there reuses the request id)
                migrations += 1
                if migrations > self.config.max_migrations:
                    raise UpstreamError(f"decode failed {migrations} times: {e}") from None
                log.warning("decode of %s on %s failed (%s); prefilling it there instead",
                            req.request_id, decode.worker_id, e)
                self.metrics.local_prefills.labels("transfer_failed").inc()
                first = None  # every later attempt prefills locally
                continue
            finally:
                if inbox is not None:
                    self.outputs.unsubscribe(req.request_id, inbox)
                if handoff_open:
                    self._abort_prefill(plan, req.request_id,
                                        None if decode_ended_it else decode)
                elif not finished and not decode_ended_it and inbox is not None:
                    # The client left, a deadline passed or the stream broke: nothing else
                    # stops the request on that worker (an Outputs stream that ended does).
                    self._abort_later([decode], req.request_id)
            failed.add(decode.worker_id)
            self.registry.fence(decode.worker_id, self.config.fence_s)
            migrations += 1
            self.metrics.migrations.inc()
            live = self.registry.live("decode")
            target = choose_migration_target(self._decode_candidates(live), failed,
                                             self.config.weights, next(self._decode_turn))
            log.warning("decode of %s on %s failed after %d tokens (%s); continuing on %s",
                        req.request_id, decode.worker_id, len(generated), reason,
                        target.worker_id if target else "no other worker")
            if migrations > self.config.max_migrations:
                raise UpstreamError(f"decode failed {migrations} times: {reason}")
            if target is None:
                raise UpstreamError(f"decode failed and no other decode worker is left: {reason}")
            decode = next(r for r in live if r.worker_id == target.worker_id)

    @property
    def prefix_hit_ratio(self) -> float:
        return self._cached_total / self._prompt_total if self._prompt_total else 0.0

    def _count_prompt(self, prompt_tokens: int, cached_tokens: int) -> None:
        self._prompt_total += prompt_tokens
        self._cached_total += cached_tokens
        self.metrics.prompt_tokens.inc(prompt_tokens)
        self.metrics.cached_tokens.inc(cached_tokens)
        self.metrics.prefix_hit_ratio.set(self.prefix_hit_ratio)

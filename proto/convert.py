"""Conversions between wire messages and the plain types of common/ and the KV layer
(torch-free: the router uses them). The proto is the KV handle's only serialization."""

from __future__ import annotations

import json
from dataclasses import asdict

from google.protobuf.message import DecodeError

from common.outputs import TokenLogprob
from common.sampling_params import SamplingParams
from common.structured_output import StructuredOutput
from kv_transfer.handle import IncompatibleKVError, KVCompat, KVHandle, SourceRank
from proto import pb


def sampling_to_pb(p: SamplingParams) -> pb.SamplingParams:
    msg = pb.SamplingParams(
        max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k,
        stop=list(p.stop), stop_token_ids=list(p.stop_token_ids), ignore_eos=p.ignore_eos,
        include_stop_str_in_output=p.include_stop_str_in_output,
        presence_penalty=p.presence_penalty, frequency_penalty=p.frequency_penalty,
        skip_special_tokens=p.skip_special_tokens, logit_bias=dict(p.logit_bias),
        min_tokens=p.min_tokens,
    )
    if p.structured is not None:
        msg.structured_kind, msg.structured_spec = p.structured.kind, p.structured.spec
    if p.repetition_penalty != 1.0:
        msg.repetition_penalty = p.repetition_penalty
    if p.seed is not None:
        msg.seed = p.seed
    if p.logprobs is not None:
        msg.logprobs = p.logprobs
    return msg


def sampling_from_pb(msg: pb.SamplingParams) -> SamplingParams:
    """Raises ValueError (with every problem named) for out-of-range values."""
    return SamplingParams(
        max_tokens=msg.max_tokens, temperature=msg.temperature, top_p=msg.top_p,
        top_k=msg.top_k, seed=msg.seed if msg.HasField("seed") else None, stop=tuple(msg.stop),
        stop_token_ids=tuple(msg.stop_token_ids), ignore_eos=msg.ignore_eos,
        include_stop_str_in_output=msg.include_stop_str_in_output,
        presence_penalty=msg.presence_penalty, frequency_penalty=msg.frequency_penalty,
        logprobs=msg.logprobs if msg.HasField("logprobs") else None,
        skip_special_tokens=msg.skip_special_tokens,
        structured=(StructuredOutput(msg.structured_kind, msg.structured_spec)
                    if msg.structured_kind else None),
        logit_bias=dict(msg.logit_bias), min_tokens=msg.min_tokens,
        repetition_penalty=(msg.repetition_penalty if msg.HasField("repetition_penalty")
                            else 1.0),
    )


def logprob_to_pb(lp: TokenLogprob) -> pb.TokenLogprob:
    return pb.TokenLogprob(token_id=lp.token_id, logprob=lp.logprob,
                           top=[pb.TopLogprob(token_id=t, logprob=v) for t, v in lp.top])


def logprob_from_pb(msg: pb.TokenLogprob) -> TokenLogprob:
    return TokenLogprob(msg.token_id, msg.logprob, [(t.token_id, t.logprob) for t in msg.top])


def handle_to_pb(h: KVHandle) -> pb.KVHandle:
    return pb.KVHandle(
        protocol_version=h.protocol_version, request_id=h.request_id, engine_id=h.engine_id,
        block_ids=list(h.block_ids), num_tokens=h.num_tokens, tp_size=h.tp_size,
        sources=[pb.SourceRank(tp_rank=s.tp_rank, agent_name=s.agent_name,
                               agent_metadata=s.agent_metadata, base_address=s.base_address,
                               num_blocks=s.num_blocks, device_id=s.device_id)
                 for s in h.sources],
        compat=pb.KVCompat(**asdict(h.compat)), compat_digest=h.compat_digest,
        lease_deadline=h.lease_deadline, memory_kind=h.memory_kind,
        extra_json=json.dumps(h.extra).encode() if h.extra else b"",
    )


def handle_from_pb(msg: pb.KVHandle) -> KVHandle:
    """Raises IncompatibleKVError for an ``extra_json`` that is not a JSON object."""
    c = msg.compat
    try:
        extra = json.loads(msg.extra_json) if msg.extra_json else {}
    except ValueError as e:
        raise IncompatibleKVError(f"malformed KV handle extra: {e}") from e
    if not isinstance(extra, dict):
        raise IncompatibleKVError("malformed KV handle extra: not a JSON object")
    return KVHandle(
        request_id=msg.request_id, engine_id=msg.engine_id, block_ids=tuple(msg.block_ids),
        num_tokens=msg.num_tokens, tp_size=msg.tp_size,
        sources=tuple(SourceRank(s.tp_rank, s.agent_name, s.agent_metadata, s.base_address,
                                 s.num_blocks, s.device_id) for s in msg.sources),
        compat=KVCompat(c.model, c.dtype, c.kv_dtype, c.num_layers, c.num_kv_heads, c.head_dim,
                        c.block_size, c.hash_seed, tuple(c.kv_scales)),
        compat_digest=msg.compat_digest, lease_deadline=msg.lease_deadline,
        memory_kind=msg.memory_kind or "DRAM", protocol_version=msg.protocol_version,
        extra=extra,
    )


def handle_to_bytes(h: KVHandle) -> bytes:
    """The handle's one serialization (the wire message), for pipes and queues too."""
    return handle_to_pb(h).SerializeToString()


def handle_from_bytes(data: bytes) -> KVHandle:
    """Raises IncompatibleKVError for bytes that are not a KV handle."""
    try:
        msg = pb.KVHandle.FromString(data)
    except DecodeError as e:
        raise IncompatibleKVError(f"malformed KV handle: {e}") from e
    return handle_from_pb(msg)

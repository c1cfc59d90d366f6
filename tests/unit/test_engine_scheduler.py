"""Scheduling, KV memory, sampling and streaming: preemption, cancellation, stop strings, seeds, limits."""

from __future__ import annotations

import asyncio

import pytest
import torch

from loraledger.runtime.engine import Engine, GenerationRequest, SamplingParams
from loraledger.runtime.engine.sampling import sample
from loraledger.runtime.engine.testing import EOS_ID, make_peft_adapter, make_tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

PROMPTS = ["The cat sat on the mat", "Many adapters, one GPU", "abc", "Paged attention reads block tables"]


def greedy(n=10, **kw):
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, **kw)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("m") / "model", "llama")


@pytest.fixture(scope="module")
def adapter(base, tmp_path_factory):
    return make_peft_adapter(base, tmp_path_factory.mktemp("a") / "a", r=4, targets=["q_proj", "v_proj", "down_proj"])


def _engine(base, adapter=None, **kw):
    engine = Engine.from_pretrained(base, max_adapters=2, max_lora_rank=8, **kw)
    if adapter is not None:
        engine.add_adapter("a", adapter)
    return engine


def _alone(base, adapter, requests):
    """Each request run by itself in a roomy engine."""
    engine = _engine(base, adapter)
    return [engine.generate_batch([r])[0].token_ids for r in requests]


def test_preemption_when_kv_runs_out_gives_the_same_tokens(base, adapter):
    requests = [GenerationRequest(p, adapter_id=a, params=greedy(14)) for p, a in zip(PROMPTS, [None, "a", "a", None])]
    # 14 blocks of 4 tokens: the longest request needs 13 blocks, so they cannot all stay resident.
    engine = _engine(base, adapter, num_kv_blocks=14, block_size=4)
    results = engine.generate_batch(requests)
    assert engine.stats()["preemptions"] > 0
    assert [r.token_ids for r in results] == _alone(base, adapter, requests)
    assert all(r.finish_reason == "length" for r in results)
    assert engine.stats()["kv_blocks_free"] == 14


def test_limits_reject_or_cap_without_crashing(base):
    engine = _engine(base, num_kv_blocks=8, block_size=4)  # 32 tokens of KV: max_model_len becomes 32
    assert engine.max_model_len == 32
    with pytest.raises(ValueError, match="no room"):
        engine.add_request(GenerationRequest("x" * 40))
    with pytest.raises(ValueError, match="unknown adapter"):
        engine.add_request(GenerationRequest("x", adapter_id="missing"))
    with pytest.raises(ValueError, match="token ids"):
        engine.add_request(GenerationRequest([1, 10_000]))
    [res] = engine.generate_batch([GenerationRequest("x" * 20, params=greedy(100))])
    assert res.finish_reason == "length" and res.usage.prompt_tokens + res.usage.completion_tokens == 32


def test_more_requests_than_seqs_queue_and_all_finish(base, adapter):
    requests = [GenerationRequest(PROMPTS[i % 4], adapter_id=[None, "a"][i % 2], params=greedy(5)) for i in range(9)]
    engine = _engine(base, adapter, max_num_seqs=3, max_num_batched_tokens=8)
    results = engine.generate_batch(requests)
    assert all(r.finish_reason == "length" for r in results)
    assert [r.token_ids for r in results[:4]] == _alone(base, adapter, requests[:4])


def test_abort_waiting_and_running(base):
    engine = _engine(base, max_num_seqs=1)
    first = GenerationRequest("first", params=greedy(50))
    second = GenerationRequest("second", params=greedy(50))
    engine.add_request(first)
    engine.add_request(second)
    engine.step()
    engine.step()
    engine.abort(first.request_id)  # running
    engine.abort(second.request_id)  # waiting
    events = engine.step()
    reasons = {e.request_id: e.finish_reason for e in events}
    assert reasons == {first.request_id: "abort", second.request_id: "abort"}
    assert not engine.has_unfinished()
    assert engine.stats()["kv_blocks_free"] == engine.stats()["kv_blocks_total"]


def test_stop_strings_and_stop_tokens(base):
    engine = _engine(base)
    [full] = engine.generate_batch([GenerationRequest(PROMPTS[0], params=greedy(16))])
    assert len(full.text) >= 6, full.text
    stop = full.text[3:5]
    cut = full.text.index(stop)
    [stopped] = engine.generate_batch([GenerationRequest(PROMPTS[0], params=greedy(16, stop=(stop, "never")))])
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[:cut]
    assert stopped.token_ids == full.token_ids[: len(stopped.token_ids)]

    token = full.token_ids[4]
    [by_token] = engine.generate_batch([GenerationRequest(PROMPTS[0], params=greedy(16, stop_token_ids=(token,)))])
    first = full.token_ids.index(token)
    assert by_token.finish_reason == "stop" and by_token.token_ids == full.token_ids[: first + 1]


def test_eos_stops_unless_ignored(base):
    engine = _engine(base)
    params = SamplingParams(max_tokens=40, temperature=1.0, seed=3)
    [res] = engine.generate_batch([GenerationRequest(PROMPTS[1], params=params)])
    if res.finish_reason == "stop":
        assert res.token_ids[-1] == EOS_ID and EOS_ID not in res.token_ids[:-1]
    else:
        assert EOS_ID not in res.token_ids


def test_seeded_sampling_is_reproducible_and_batch_independent(base, adapter):
    params = SamplingParams(max_tokens=12, temperature=0.9, top_k=40, top_p=0.95, seed=1234, ignore_eos=True)
    engine = _engine(base, adapter)
    [alone] = engine.generate_batch([GenerationRequest(PROMPTS[1], adapter_id="a", params=params)])
    batch = engine.generate_batch(
        [GenerationRequest(p, params=SamplingParams(max_tokens=9, temperature=1.0)) for p in PROMPTS]
        + [GenerationRequest(PROMPTS[1], adapter_id="a", params=params)]
    )
    assert batch[-1].token_ids == alone.token_ids
    other_seed = SamplingParams(max_tokens=12, temperature=0.9, top_k=40, top_p=0.95, seed=99, ignore_eos=True)
    [other] = engine.generate_batch([GenerationRequest(PROMPTS[1], adapter_id="a", params=other_seed)])
    assert other.token_ids != alone.token_ids


def test_sampler_filters():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=g)
    top1 = [SamplingParams(temperature=1.0, top_k=1, logprobs=True)] * 2
    top1 += [SamplingParams(temperature=1.0, top_p=1e-6)] * 2
    tokens, logprobs = sample(logits, top1, [None] * 4, g)
    assert tokens.tolist() == logits.argmax(-1).tolist()
    torch.testing.assert_close(logprobs, torch.log_softmax(logits, -1).max(-1).values)
    params = [SamplingParams(temperature=1.0, top_k=5)] * 4
    for _ in range(20):
        tokens, _ = sample(logits, params, [None] * 4, g)
        top5 = logits.topk(5, dim=-1).indices
        assert all(tokens[i] in top5[i] for i in range(4))
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError):
        SamplingParams(max_tokens=0)


def test_sampler_skips_logprobs_nobody_asked_for():
    """Without a row asking, no log-softmax pass over the logits: NaN logprobs, the same tokens."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 30, generator=g)
    plain = [SamplingParams(temperature=0)] * 3
    tokens, logprobs = sample(logits, plain, [None] * 3, g)
    assert tokens.tolist() == logits.argmax(-1).tolist() and bool(logprobs.isnan().all())
    asked = plain[:2] + [SamplingParams(temperature=0, logprobs=True)]
    tokens2, logprobs2 = sample(logits, asked, [None] * 3, g)
    assert tokens2.tolist() == tokens.tolist()
    torch.testing.assert_close(logprobs2, torch.log_softmax(logits, -1).max(-1).values)


def _allowed(row: torch.Tensor, p: SamplingParams) -> set[int]:
    """The tokens a row may draw, the filters written out one by one: top-k (ties kept), then top-p."""
    scaled = row / p.temperature
    if p.top_k:
        scaled = scaled.masked_fill(scaled < scaled.topk(p.top_k).values[-1], float("-inf"))
    probs = torch.softmax(scaled, -1)
    kept, total = set(), 0.0
    for token in probs.argsort(descending=True).tolist():
        if probs[token] == 0 or total >= p.top_p:
            break
        kept.add(token)
        total += probs[token].item()
    return kept


def test_sampler_filters_compose_per_row_and_greedy_rows_keep_their_argmax():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 40, generator=g)
    params = [
        SamplingParams(temperature=0),
        SamplingParams(temperature=0.7, top_k=8, top_p=0.6, logprobs=True),  # one row asks: every row gets them
        SamplingParams(temperature=1.3, top_p=0.3),
        SamplingParams(temperature=0, top_k=2),
        SamplingParams(temperature=1.0, top_k=3),
        SamplingParams(temperature=0.5),
    ]
    allowed = [_allowed(row, p) for row, p in zip(logits, params)]
    seen = [set() for _ in params]
    for _ in range(300):
        tokens, logprobs = sample(logits, params, [None] * len(params), g)
        for i, token in enumerate(tokens.tolist()):
            assert token in allowed[i], (i, token, allowed[i])
            seen[i].add(token)
        torch.testing.assert_close(logprobs, torch.log_softmax(logits, -1).gather(1, tokens[:, None])[:, 0])
    argmax = logits.argmax(-1).tolist()
    assert seen[0] == {argmax[0]} and seen[3] == {argmax[3]}
    assert all(len(seen[i]) > 1 for i in (1, 2, 4, 5))  # the sampled rows do sample


def _drive(engine, requests, *, abort_step: int, abort_id: str) -> dict:
    """Steps an engine by hand: two requests first, the rest two steps later, one aborted at abort_step.
    Returns each request's events as (tokens, text, finish reason, logprobs) tuples."""
    events: dict[str, list] = {}
    for r in requests[:2]:
        engine.add_request(r)
    step = 0
    while engine.has_unfinished() or step < 3:
        if step == 2:
            for r in requests[2:]:
                engine.add_request(r)
        if step == abort_step:
            engine.abort(abort_id)
        for ev in engine.step():
            events.setdefault(ev.request_id, []).append((ev.token_ids, ev.text, ev.finish_reason, ev.logprobs))
        step += 1
    return events


def test_overlapped_decoding_gives_the_same_events(base, adapter):
    """Launching decode step N+1 before step N's tokens are read (the default) changes nothing a client sees:
    every event equal, event by event, with stop tokens, stop strings, seeded sampling with logprobs, an adapter,
    requests of different lengths arriving later and an abort; rows computed past a stop are discarded and
    every KV block comes back. (Logprobs agree to float noise: a discarded row changes a step's batch size.)"""
    plain = _engine(base, adapter, overlap_decode=False)
    [full] = plain.generate_batch([GenerationRequest(PROMPTS[0], params=greedy(24))])
    stop_token, stop_text = full.token_ids[6], full.text[5:7]
    requests = [
        GenerationRequest(PROMPTS[0], params=greedy(24, stop_token_ids=(stop_token,)), request_id="stop_token"),
        GenerationRequest(PROMPTS[1], adapter_id="a", params=greedy(9), request_id="adapter"),
        GenerationRequest(PROMPTS[0], params=greedy(24, stop=(stop_text,)), request_id="stop_text"),
        GenerationRequest(PROMPTS[2], adapter_id="a", request_id="seeded", params=SamplingParams(
            max_tokens=14, temperature=0.9, top_p=0.9, seed=5, logprobs=True, ignore_eos=True)),
        GenerationRequest(PROMPTS[3], params=greedy(30), request_id="aborted"),
        GenerationRequest(PROMPTS[3], params=greedy(18), request_id="long"),
    ]
    want = _drive(_engine(base, adapter, overlap_decode=False), requests, abort_step=9, abort_id="aborted")
    engine = _engine(base, adapter)
    got = _drive(engine, requests, abort_step=9, abort_id="aborted")
    assert sorted(got) == sorted(want)
    for rid, events in want.items():
        assert [e[:3] for e in got[rid]] == [e[:3] for e in events], rid
        for (*_, got_lp), (*_, want_lp) in zip(got[rid], events):
            assert (got_lp is None) == (want_lp is None)
            assert want_lp is None or got_lp == pytest.approx(want_lp, rel=1e-5, abs=1e-5)
    assert want["stop_token"][-1][2] == "stop" and want["stop_text"][-1][2] == "stop"
    assert want["aborted"][-1][2] == "abort" and want["long"][-1][2] == "length"
    stats = engine.stats()
    assert stats["overlapped_steps"] > 10 and stats["kv_blocks_free"] == stats["kv_blocks_total"]
    # The rows past each stop were computed and dropped: more tokens through the forward than without overlap.
    assert stats["step_times"]["tokens"] > sum(len(engine.tokenizer.encode(r.prompt)) for r in requests)


def test_overlapped_decoding_falls_back_when_blocks_run_out(base, adapter):
    """With too few KV blocks for every row's next token, the step is scheduled afresh (preempting), and the
    tokens still equal each request's alone."""
    requests = [GenerationRequest(p, adapter_id=a, params=greedy(14)) for p, a in zip(PROMPTS, [None, "a", "a", None])]
    engine = _engine(base, adapter, num_kv_blocks=14, block_size=4)
    results = engine.generate_batch(requests)
    assert engine.stats()["preemptions"] > 0 and engine.stats()["overlapped_steps"] > 0
    assert [r.token_ids for r in results] == _alone(base, adapter, requests)
    assert engine.stats()["kv_blocks_free"] == 14


def test_step_times_split_every_step(base):
    engine = _engine(base)
    engine.generate_batch([GenerationRequest(p, params=greedy(4)) for p in PROMPTS])
    stats = engine.stats()
    times = stats["step_times"]
    assert stats["cuda_graphs"] is None  # CPU: every step eager
    assert times["eager_steps"] == engine.num_steps and times["graphed_steps"] == 0
    # Each request's prompt plus every output token but the last went through a forward.
    assert times["tokens"] == sum(len(engine.tokenizer.encode(p)) + 3 for p in PROMPTS)
    phases = [times[k] for k in ("schedule_s", "forward_s", "sample_s", "output_s")]
    assert min(phases) >= 0 and times["eager_step_s"] == pytest.approx(sum(phases))


def test_async_stream_matches_batch_and_cancels(base, adapter):
    requests = [
        GenerationRequest(p, adapter_id=a, params=greedy(8, stop=("zz",)))
        for p, a in zip(PROMPTS, [None, "a", "a", None])
    ]
    want = _alone(base, adapter, requests)
    engine = _engine(base, adapter)
    engine.start()
    try:

        async def collect(request):
            tokens, text, last = [], "", None
            async for event in engine.generate(request):
                tokens += event.token_ids
                text += event.text
                last = event
            return tokens, text, last

        async def cancel_after_first():
            stream = engine.generate(GenerationRequest("cancel me", params=greedy(10_000)))
            async for _ in stream:
                break
            await stream.aclose()

        async def main():
            outs = await asyncio.gather(*(collect(r) for r in requests), cancel_after_first())
            return outs[:-1]

        outs = asyncio.run(main())
    finally:
        engine.stop()
    for (tokens, text, last), expected in zip(outs, want):
        assert tokens == expected
        assert last.finish_reason in ("length", "stop") and last.usage.completion_tokens == len(tokens)
    assert not engine.has_unfinished()
    assert engine.stats()["kv_blocks_free"] == engine.stats()["kv_blocks_total"]


def test_chat_template_and_text_prompt(base):
    engine = _engine(base)
    prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert prompt == "<s><|user|>hi</s><|assistant|>"
    ids = engine.tokenizer.encode(prompt, add_special_tokens=False)
    assert ids[0] == engine.tokenizer.token_id("<s>") and engine.tokenizer.decode(ids) == "<|user|>hi<|assistant|>"

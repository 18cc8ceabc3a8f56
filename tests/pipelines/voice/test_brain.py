"""Brains: the OpenAI-compatible endpoint client against a real local HTTP server, and the local LM
(continuous batching, chunked prefill, KV reuse) on a tiny model saved with save_pretrained."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from streamserve.pipelines.voice.brain import EndpointBrain, Generation, parse_sse_delta
from streamserve.pipelines.voice.lm import LocalBrain
from tests.pipelines.voice.fake_llm import FakeLLM, answer_for

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]


def wait_done(gen: Generation, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not gen.finished:
        assert time.monotonic() < deadline, "generation did not finish"
        time.sleep(0.01)


def test_endpoint_streams_the_reply(fake_llm: FakeLLM) -> None:
    brain = EndpointBrain(fake_llm.url)
    try:
        gen = brain.start(MSGS, 32)
        wait_done(gen)
        assert gen.error is None
        assert gen.text == answer_for("What is the capital of France?")
        assert fake_llm.requests[0]["stream"] is True and fake_llm.requests[0]["messages"] == MSGS
    finally:
        brain.close()


def test_cancel_closes_the_stream_and_generation_stops() -> None:
    with FakeLLM(delay_s=0.05, long=True) as llm:
        brain = EndpointBrain(llm.url)
        try:
            gen = brain.start(MSGS, 512)
            deadline = time.monotonic() + 10
            while len(gen.text) < 20:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            gen.cancel()
            assert llm.wait_for(lambda: llm.disconnects == 1 and llm.active == 0, timeout=5.0)
            assert llm.completed == 0
            length = len(gen.text)
            time.sleep(0.2)
            assert len(gen.text) == length  # nothing arrives after the cancel
            assert brain.active == 0
        finally:
            brain.close()


def test_endpoint_down_is_a_typed_error_not_a_hang() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    brain = EndpointBrain(f"http://127.0.0.1:{port}/v1")
    try:
        gen = brain.start(MSGS, 16)
        wait_done(gen, timeout=5.0)
        assert gen.error is not None and gen.error.code == "llm_unavailable"
        assert str(port) in str(gen.error)
    finally:
        brain.close()


def test_endpoint_http_error_is_reported(fake_llm: FakeLLM) -> None:
    brain = EndpointBrain(fake_llm.url.replace("/v1", "/nope"))
    try:
        gen = brain.start(MSGS, 16)
        wait_done(gen, timeout=5.0)
        assert gen.error is not None and gen.error.code == "llm_error" and "404" in str(gen.error)
    finally:
        brain.close()


def test_sse_lines_and_bad_urls() -> None:
    assert parse_sse_delta('data: {"choices":[{"delta":{"content":"Hi"}}]}') == "Hi"
    assert parse_sse_delta("data: [DONE]") is None
    assert parse_sse_delta(": keep-alive") == ""
    with pytest.raises(ValueError, match="ftp://x"):
        EndpointBrain("ftp://x")


# --- the local LM -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with a word-level tokenizer and a chat template, saved with save_pretrained."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<unk>", "system", "user", "assistant", ":", "\n"]
    words += "be brief what is the capital of france a spider has eight legs tell me more about it".split()
    words += [f"w{i}" for i in range(64)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    fast.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] | lower }} \n {% endfor %}"
                          "{% if add_generation_prompt %}assistant : {% endif %}")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(words), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=1, pad_token_id=0, bos_token_id=1)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-lm")
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def reference(brain: LocalBrain, messages: list[dict[str, str]], n: int) -> str:
    ids = torch.tensor([brain.encode(messages)])
    out = brain.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                               eos_token_id=sorted(brain._eos), pad_token_id=0)
    return str(brain.tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))


def test_llm_model_dir_loads_and_batched_decode_matches_generate(tiny_lm_dir: Path) -> None:
    brain = LocalBrain.from_path(tiny_lm_dir, prefill_chunk=64)
    try:
        prompts = [[{"role": "user", "content": q}] for q in
                   ("what is the capital of france", "a spider", "tell me more about it w1 w2 w3 w4 w5 w6")]
        gens = [brain.start(p, 12) for p in prompts]
        for g in gens:
            wait_done(g)
        assert brain.stats["max_batch_seen"] >= 2  # sessions decoded together
        for p, g in zip(prompts, gens, strict=True):
            assert g.error is None
            assert g.text == reference(brain, p, 12)  # padding and positions are right
    finally:
        brain.close()


def test_chunked_prefill_interleaves_with_decode_and_kv_is_reused(tiny_lm_dir: Path) -> None:
    brain = LocalBrain.from_path(tiny_lm_dir, prefill_chunk=8)
    try:
        short = brain.start([{"role": "user", "content": "a spider"}], 40)
        long_prompt = [{"role": "user", "content": " ".join(f"w{i % 64}" for i in range(300))}]
        long = brain.start(long_prompt, 4)
        wait_done(short)
        wait_done(long)
        assert brain.stats["interleaved"] > 0  # decode steps ran between the long prompt's chunks
        # Thinking while listening: a prefill of the partial words, then the final prompt reuses it.
        partial = [{"role": "user", "content": "what is the capital"}]
        final = [{"role": "user", "content": "what is the capital of france"}]
        wait_done(brain.prefill(partial, key="s1"))
        before = brain.stats["reused_tokens"]
        gen = brain.start(final, 8, key="s1")
        wait_done(gen)
        assert brain.stats["reused_tokens"] - before >= len(brain.encode(partial)) - 4
        assert gen.text == reference(brain, final, 8)  # reuse changes nothing in the answer
    finally:
        brain.close()


def test_local_generation_cancel_stops_decoding(tiny_lm_dir: Path) -> None:
    brain = LocalBrain.from_path(tiny_lm_dir)
    brain._eos = set()  # never stop on its own
    try:
        gen = brain.start([{"role": "user", "content": "tell me more"}], 400)
        deadline = time.monotonic() + 10
        while brain.stats["decode_tokens"] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        gen.cancel()
        time.sleep(0.2)
        steps = brain.stats["decode_tokens"]
        time.sleep(0.2)
        assert brain.stats["decode_tokens"] == steps < 400
    finally:
        brain.close()


def test_bad_llm_model_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=str(tmp_path)):
        LocalBrain.from_path(tmp_path)


def test_long_conversation_keeps_the_system_sink_and_a_window(tiny_lm_dir: Path) -> None:
    brain = LocalBrain.from_path(tiny_lm_dir, max_context=64)
    try:
        system = {"role": "system", "content": "be brief"}
        turns: list[dict[str, str]] = []
        for i in range(12):
            turns += [{"role": "user", "content": f"what is w{i} w{i + 1}"}, {"role": "assistant", "content": f"w{i} is a spider"}]
        messages = [system, *turns, {"role": "user", "content": "tell me more about it"}]
        ids = brain.encode(messages, max_tokens=8)
        assert len(ids) <= 64 - 8 - 1
        kept = brain.window_messages(messages, 64 - 8 - 1)
        assert kept[0] == system and kept[-1] == messages[-1]  # the sink and the question stay
        assert 2 < len(kept) < len(messages)  # the oldest turns rolled out, whole
        assert kept[1:] == messages[len(messages) - len(kept) + 1:]
        assert ids == brain._tokens(kept)
        # Even a question alone longer than the context keeps the sink and the question's last words.
        huge = [system, {"role": "user", "content": " ".join(f"w{i % 64}" for i in range(200)) + " capital"}]
        ids = brain.encode(huge, max_tokens=8)
        assert len(ids) <= 55 and ids[:3] == brain._tokens([system])[:3]
        assert "capital" in brain.tok.decode(ids)
    finally:
        brain.close()


def test_rolled_kv_moves_the_window_to_its_new_positions(tiny_lm_dir: Path) -> None:
    """Layer 0's keys depend only on the token and its position: after a roll they must equal a fresh
    prefill's keys of the same tokens at their new positions (the RoPE re-rotation is exact in fp32;
    in bf16, the default on a CPU with native bf16, within its rounding)."""
    from streamserve.pipelines.voice.lm import roll_kv

    for dtype, atol, rtol in ((torch.float32, 1e-5, 1e-4), (torch.bfloat16, 2e-2, 2e-2)):
        brain = LocalBrain.from_path(tiny_lm_dir, dtype=dtype)
        try:
            old = brain._tokens([{"role": "user", "content": "w1 w2 w3 w4 w5 w6 w7 w8 what is the capital of france"}])
            sink, start = 3, 9
            _, kv = brain._forward([old], [None], [0])
            rolled = roll_kv(kv, sink, start, brain.model.model.rotary_emb)
            _, fresh = brain._forward([old[:sink] + old[start:]], [None], [0])
            assert rolled[0][0].shape == fresh[0][0].shape == (1, 2, len(old) - (start - sink), 16)
            assert rolled[0][0].dtype == dtype
            torch.testing.assert_close(rolled[0][0], fresh[0][0], atol=atol, rtol=rtol)  # keys, re-rotated
            torch.testing.assert_close(rolled[0][1], fresh[0][1], atol=atol, rtol=rtol)  # values, moved
        finally:
            brain.close()


def test_a_rolling_conversation_reuses_the_window_kv(tiny_lm_dir: Path) -> None:
    brain = LocalBrain.from_path(tiny_lm_dir, max_context=96)
    try:
        system = {"role": "system", "content": "be brief"}
        history: list[dict[str, str]] = []
        for i in range(10):
            messages = [system, *history, {"role": "user", "content": f"what is w{i} w{i + 1} w{i + 2}"}]
            gen = brain.start(messages, 6, key="s1")
            wait_done(gen)
            assert gen.error is None
            history += [messages[-1], {"role": "assistant", "content": gen.text}]
        # The window rolled (the prompt stopped growing at the context) and the kept turns' KV was
        # moved, not recomputed: most of each rolled prompt came from the cache.
        assert len(brain.encode([system, *history], 6)) < len(brain._tokens([system, *history]))
        assert brain.stats["rolled_tokens"] > 50
        assert brain.stats["prefill_tokens"] < sum(len(brain._tokens(history[:2 * i + 1])) for i in range(10)) / 2
    finally:
        brain.close()


def test_a_clause_goes_to_tts_when_the_brain_writes_it_not_at_the_next_chunk(parts: Any) -> None:
    """The reply listens to its generation: the brain's own thread cuts the clause and queues its TTS,
    so the first audio is synthesized with no engine step in between; every clause is queued before
    the reply can count as done, and the audio comes back through the mailbox in order."""
    import threading

    from streamserve.pipelines.voice.reply import Mailbox, Reply, ReplyConfig
    from streamserve.pipelines.voice.worker import VoiceWorker

    spoken: list[str] = []
    said = threading.Event()

    def tts(text: str) -> Any:
        spoken.append(text)
        said.set()
        return parts.tts(text)

    tts.sample_rate = parts.tts.sample_rate  # type: ignore[attr-defined]
    worker, mailbox, gen = VoiceWorker("test-tts"), Mailbox(), Generation()
    try:
        reply = Reply(0, "hi", gen, tts=tts, worker=worker, mailbox=mailbox, config=ReplyConfig(),  # type: ignore[arg-type]
                      speculative=False)
        producer = threading.Thread(target=lambda: (gen.put("Sure thing, "), gen.put("Paris is the capital."), gen.finish()))
        producer.start()
        producer.join(5)
        assert said.wait(10)  # no reply.pump() on this (the "engine") thread
        assert reply.text_done and not reply.done
        deadline = time.monotonic() + 20
        while len(reply.spoken_text) < 2 and time.monotonic() < deadline:
            mailbox.run()
            time.sleep(0.01)
        assert spoken == ["Sure thing,", "Paris is the capital."] and reply.spoken_text == spoken
        assert reply.has_audio
    finally:
        worker.stop()

from __future__ import annotations

import threading
import time

import pytest
import torch

from inference.llama import (
    BatchDecoder,
    Cancel,
    ContextLengthError,
    GenerationError,
    Llama,
    Request,
    SamplingParams,
    TokenEvent,
)
from inference.llama.demo import CORPUS
from inference.llama.generation import _argmax_rows, _safe_len, _sample_one

PROMPTS = ["The old keeper", "In spring the days grow", "Dear sister, I am", "One"]
GREEDY = SamplingParams(max_new_tokens=24)


@pytest.fixture(scope="module")
def llama(demo_dir) -> Llama:
    return Llama.load(demo_dir, dtype="float32")


@pytest.fixture(scope="module")
def alone(llama) -> list:
    """Each prompt generated on its own (greedy)."""
    return [llama.generate([p], GREEDY)[0] for p in PROMPTS]


def test_the_demo_writes_words(llama):
    [c] = llama.generate(["The lighthouse"], SamplingParams(max_new_tokens=40))
    words = c.text.split()
    known = set(CORPUS.read_text().split())
    assert len(words) >= 5
    assert sum(w in known for w in words) / len(words) > 0.8, c.text


@pytest.mark.parametrize("threads", [1, 2])
def test_batched_greedy_equals_one_at_a_time(llama, alone, threads):
    torch.set_num_threads(threads)
    batched = llama.generate(PROMPTS, GREEDY)
    for one, many in zip(alone, batched, strict=True):
        assert many.tokens == one.tokens
        assert many.text == one.text
        assert many.finish_reason == "length"
        assert len(many.tokens) == 24


def test_requests_joining_a_running_batch_decode_as_if_alone(llama, alone):
    decoder = llama.decoder(max_batch_size=2)  # fewer slots than requests: some wait
    done = {}
    decoder.add(PROMPTS[0], GREEDY, request_id="a")
    for _ in range(5):
        done.update({c.request_id: c for c in decoder.step()})
    decoder.add(PROMPTS[1], GREEDY, request_id="b")
    decoder.add(PROMPTS[2], GREEDY, request_id="c")  # waits for a slot
    assert decoder.waiting == 2
    for _ in range(3):
        done.update({c.request_id: c for c in decoder.step()})
    decoder.add(Request(PROMPTS[3], GREEDY, request_id="d"))
    while decoder.has_work():
        done.update({c.request_id: c for c in decoder.step()})
    assert [done[k].tokens for k in "abcd"] == [c.tokens for c in alone]
    assert decoder.active == 0


def test_greedy_equals_the_argmax_of_the_full_forward(llama):
    [c] = llama.generate(["The river"], SamplingParams(max_new_tokens=10, logprobs=True))
    ids = torch.tensor([c.prompt_tokens + c.tokens])
    with torch.inference_mode():
        logits = llama.model(ids)[0, len(c.prompt_tokens) - 1 : -1]
    assert logits.argmax(-1).tolist() == c.tokens
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(c.tokens)[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-5, rtol=0)


def test_echo_with_prompt_logprobs(llama):
    [c] = llama.generate(
        ["The river begins"], SamplingParams(max_new_tokens=5, echo=True, logprobs=True)
    )
    assert c.text.startswith("The river begins ")
    assert len(c.prompt_logprobs) == len(c.prompt_tokens)
    assert c.prompt_logprobs[0] is None
    ids = torch.tensor([c.prompt_tokens])
    with torch.inference_mode():
        lp = torch.log_softmax(llama.model(ids)[0, :-1], -1)
    expected = lp.gather(1, ids[0, 1:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(c.prompt_logprobs[1:]), expected, atol=1e-5, rtol=0)
    # echo without logprobs keeps the cheap path and still prefixes the prompt
    [plain] = llama.generate(["The river begins"], SamplingParams(max_new_tokens=5, echo=True))
    assert plain.text == c.text
    assert plain.prompt_logprobs is None and plain.logprobs is None


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(llama):
    params = SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.9, seed=1234)
    [first] = llama.generate(["The baker"], params)
    [again] = llama.generate(["The baker"], params)
    assert first.tokens == again.tokens
    others = [SamplingParams(max_new_tokens=20, temperature=1.0, seed=s) for s in (5, 6)]
    batch = llama.generate(["Dear sister", "The baker", "One"], [others[0], params, others[1]])
    assert batch[1].tokens == first.tokens
    different = [
        llama.generate(["The baker"], SamplingParams(max_new_tokens=20, temperature=1.0, seed=s))
        for s in range(4)
    ]
    assert len({tuple(c[0].tokens) for c in different}) > 1


def test_top_k_one_and_tiny_top_p_are_greedy(llama, alone):
    for params in (
        SamplingParams(max_new_tokens=24, temperature=0.7, top_k=1, seed=3),
        SamplingParams(max_new_tokens=24, temperature=0.7, top_p=1e-6, seed=3),
    ):
        [c] = llama.generate([PROMPTS[0]], params)
        assert c.tokens == alone[0].tokens


def test_top_k_and_top_p_restrict_the_candidates():
    logits = torch.log(torch.tensor([0.05, 0.5, 0.3, 0.1, 0.05]))
    gen = torch.Generator().manual_seed(0)
    top_k = SamplingParams(temperature=1.0, top_k=2)
    assert {_sample_one(logits, top_k, gen) for _ in range(200)} == {1, 2}
    # top_p 0.7: 0.5 alone is short of it, 0.5 + 0.3 reaches it; nothing else.
    top_p = SamplingParams(temperature=1.0, top_p=0.7)
    assert {_sample_one(logits, top_p, gen) for _ in range(200)} == {1, 2}
    # top-p applies to the top-k renormalised: 0.56, 0.33, 0.11 (mass before the third
    # is 0.89: kept under 0.95, dropped under 0.85).
    both = SamplingParams(temperature=1.0, top_k=3, top_p=0.95)
    assert {_sample_one(logits, both, gen) for _ in range(300)} == {1, 2, 3}
    both = SamplingParams(temperature=1.0, top_k=3, top_p=0.85)
    assert {_sample_one(logits, both, gen) for _ in range(300)} == {1, 2}
    hot = SamplingParams(temperature=100.0)
    assert len({_sample_one(logits, hot, gen) for _ in range(300)}) == 5


def test_stop_sequences_cut_the_text_before_them(llama, alone):
    full = alone[0].text
    words = full.split(" ")
    stop = " ".join(words[3:5])  # spans several tokens, somewhere in the middle
    cut = full.index(stop)
    events: list[TokenEvent] = []
    [c] = llama.generate(
        [PROMPTS[0]],
        SamplingParams(max_new_tokens=24, stop=("never appears", stop)),
        callback=events.append,
    )
    assert c.finish_reason == "stop"
    assert c.text == full[:cut]
    assert c.tokens == alone[0].tokens[: len(c.tokens)]
    assert len(c.tokens) < len(alone[0].tokens)
    assert llama.tokenizer.decode_continuation(c.prompt_tokens[-4:], c.tokens).startswith(c.text)
    # The stream never showed any of the stop sequence, and ends exactly at the cut.
    assert "".join(e.text for e in events) == c.text
    assert events[-1].finish_reason == "stop"


def test_a_stop_sequence_at_the_very_start_gives_empty_text(llama, alone):
    first_char = alone[0].text[0:2]
    [c] = llama.generate([PROMPTS[0]], SamplingParams(max_new_tokens=24, stop=(first_char,)))
    assert (c.text, c.tokens, c.finish_reason) == ("", [], "stop")


def test_streamed_events_add_up_to_the_completion(llama):
    events: list[TokenEvent] = []
    [c] = llama.generate(
        ["The fox"], SamplingParams(max_new_tokens=15, logprobs=True), callback=events.append
    )
    assert [e.index for e in events] == list(range(15))
    assert [e.token_id for e in events] == c.tokens
    assert [e.logprob for e in events] == c.logprobs
    assert "".join(e.text for e in events) == c.text
    assert [e.finish_reason for e in events] == [None] * 14 + ["length"]
    assert {e.request_id for e in events} == {0}


def test_eos_finishes_a_sequence_without_joining_its_tokens(llama, alone):
    decoder = llama.decoder(max_batch_size=2)
    decoder.eos_id = alone[0].tokens[3]  # pretend the 4th token is EOS
    events: list[TokenEvent] = []
    decoder.add(PROMPTS[0], GREEDY, callback=events.append)
    [c] = decoder.run()
    assert c.finish_reason == "eos"
    assert c.tokens == alone[0].tokens[:3]
    assert events[-1].token_id == decoder.eos_id
    assert events[-1].finish_reason == "eos"
    # ignore_eos runs to max_new_tokens
    decoder.add(PROMPTS[0], SamplingParams(max_new_tokens=24, ignore_eos=True))
    [c] = decoder.run()
    assert c.tokens == alone[0].tokens


def test_a_callback_cancels_its_own_sequence_only(llama, alone):
    def stop_after_three(event: TokenEvent):
        return event.index < 2  # False on the third token

    def raise_cancel(event: TokenEvent):
        if event.index == 4:
            raise Cancel

    def broken(event: TokenEvent):
        if event.index == 1:
            raise RuntimeError("socket closed")

    decoder = llama.decoder(max_batch_size=4)
    callbacks = [stop_after_three, raise_cancel, broken, None]
    for i, (prompt, cb) in enumerate(zip(PROMPTS, callbacks, strict=True)):
        decoder.add(prompt, GREEDY, callback=cb, request_id=i)
    done = {c.request_id: c for c in decoder.run()}
    assert done[0].finish_reason == "cancelled"
    assert done[0].tokens == alone[0].tokens[:3]
    assert done[1].finish_reason == "cancelled"
    assert done[1].tokens == alone[1].tokens[:5]
    assert done[2].finish_reason == "error"
    assert done[2].error == "RuntimeError: socket closed"
    assert done[3].tokens == alone[3].tokens
    assert done[3].finish_reason == "length"


def test_cancel_from_another_thread(llama, alone):
    decoder = llama.decoder(max_batch_size=1)
    a = decoder.add(PROMPTS[0], GREEDY)
    b = decoder.add(PROMPTS[1], GREEDY)  # queued: only one slot
    decoder.step()
    decoder.step()
    worker = threading.Thread(target=lambda: (decoder.cancel(a), decoder.cancel(b)))
    worker.start()
    worker.join()
    finished = decoder.step()
    assert {c.request_id: c.finish_reason for c in finished} == {a: "cancelled", b: "cancelled"}
    assert finished[0].tokens == alone[0].tokens[:2]
    assert not decoder.has_work()
    assert decoder.cancel(a) is False
    c = decoder.add(PROMPTS[2], GREEDY)  # the freed slot is reused
    assert decoder.run()[0].tokens == alone[2].tokens
    assert c == 2


def test_context_overflow_is_a_clear_error(llama):
    long_prompt = "word " * 400
    with pytest.raises(ContextLengthError, match="more than the model's context length"):
        llama.generate([long_prompt], SamplingParams(max_new_tokens=2000))
    decoder = llama.decoder(max_batch_size=1, max_seq_len=64)
    with pytest.raises(ContextLengthError, match=r"this decoder's KV cache \(64\)"):
        decoder.add("The old keeper", SamplingParams(max_new_tokens=61))
    decoder.add("The old keeper", SamplingParams(max_new_tokens=60))  # 4 + 60 fits


def test_bad_requests_are_refused(llama):
    decoder = llama.decoder(max_batch_size=1)
    decoder.add("x", request_id="same")
    with pytest.raises(GenerationError, match="already in use"):
        decoder.add("y", request_id="same")
    with pytest.raises(GenerationError, match="empty prompt"):
        decoder.add([])
    with pytest.raises(GenerationError, match=r"must be in \[0, 1024\)"):
        decoder.add([1, 1024])
    for bad in ({"max_new_tokens": -1}, {"temperature": -1}, {"top_p": 0}, {"top_k": -1}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_token_prompts_work_without_a_tokenizer(llama, alone):
    decoder = BatchDecoder(llama.model, None, max_batch_size=2)
    decoder.add(alone[0].prompt_tokens, SamplingParams(max_new_tokens=24))
    [c] = decoder.run()
    assert c.tokens == alone[0].tokens
    assert c.text == ""


def test_text_is_held_back_while_it_could_still_change():
    assert _safe_len("abc\ufffd", ()) == 3  # an incomplete UTF-8 character
    assert _safe_len("hello wor", ("world",)) == len("hello ")
    assert _safe_len("hello", ("xyz",)) == 5
    assert _safe_len("a\n\n", ("\n\n\n",)) == 1


def test_a_decode_loop_thread_serves_requests_from_other_threads(llama, alone):
    decoder = llama.decoder(max_batch_size=2)
    results: dict = {}
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            if decoder.wait_for_work(timeout=0.05):
                results.update({c.request_id: c for c in decoder.step()})

    assert decoder.wait_for_work(timeout=0.01) is False  # idle: times out
    thread = threading.Thread(target=loop)
    thread.start()
    try:
        ids = [decoder.add(p, GREEDY) for p in PROMPTS]
        deadline = time.monotonic() + 60
        while len(results) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join()
    assert [results[i].tokens for i in ids] == [c.tokens for c in alone]


def test_an_interruption_during_a_step_reaches_the_caller(llama, monkeypatch):
    class TimeLimit(Exception):  # what Celery's soft time limit raises from a signal handler
        pass

    def interrupted(*args, **kwargs):
        raise TimeLimit

    decoder = llama.decoder(max_batch_size=2)
    monkeypatch.setattr(llama.model, "prefill", interrupted)
    decoder.add(PROMPTS[0], GREEDY, request_id="slow")

    with pytest.raises(TimeLimit):
        decoder.step()


def test_a_failing_forward_fails_its_requests_and_the_decoder_goes_on(llama, alone, monkeypatch):
    decoder = llama.decoder(max_batch_size=2)
    real_prefill = llama.model.prefill

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(llama.model, "prefill", out_of_memory)
    decoder.add(PROMPTS[0], GREEDY, request_id="big")
    [failed] = decoder.step()
    assert (failed.request_id, failed.finish_reason) == ("big", "error")
    assert failed.error == "RuntimeError: out of memory"
    monkeypatch.setattr(llama.model, "prefill", real_prefill)
    decoder.add(PROMPTS[0], GREEDY, request_id="next")
    assert decoder.run()[0].tokens == alone[0].tokens


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_greedy_picks_are_torch_argmax_with_ties_and_nans(dtype):
    """Greedy sampling's argmax (numpy for CPU float32 rows) picks what torch's argmax
    picks: the first of tied maxima, the first NaN, a row's only finite value among -inf,
    and -inf rows too; rows given as a strided view of a larger tensor as well."""
    gen = torch.Generator().manual_seed(11)
    rows = torch.randn(9, 301, generator=gen)
    rows[1, 7] = rows[1, 200] = rows[1].max() + 1  # a tie: the first wins
    rows[2, 50] = float("nan")
    rows[2, 60] = float("nan")
    rows[3] = float("-inf")
    rows[3, 123] = 0.0
    rows[4] = float("-inf")
    rows[5, 300] = float("inf")
    rows[6] = 0.0
    rows = rows.to(dtype)
    with torch.inference_mode():
        for view in (rows, rows[::2], rows[:, :250], rows.t().contiguous().t()):
            assert _argmax_rows(view) == view.argmax(-1).tolist()
    assert _argmax_rows(rows)[1] == 7 and _argmax_rows(rows)[2] == 50

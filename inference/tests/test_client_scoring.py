"""The notebook client's scoring and its guard rails, against a live portal and a worker."""

from __future__ import annotations

import pytest
import torch

from inference.models import GenerationJob

pytestmark = [
    pytest.mark.worker,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def portal(live_server, generate_token):
    from portal_client import Client

    client = Client(live_server.url, generate_token, progress=False, retries=1)
    yield client
    client._session().close()


def test_score_gives_each_continuations_loglikelihood(
    jobs_worker, published_demo, portal, demo_checkpoint
):
    from inference.llama import Llama
    from inference.llama.hf import to_transformers

    context, continuations = "The keeper did not have many", [" visitors", " ships at sea"]
    scores = portal.score(context, continuations, model="demo")

    llama = Llama.load(demo_checkpoint, dtype="float32")
    hf = to_transformers(llama.model, attn_implementation="eager")
    head = llama.tokenizer.encode(context, bos=True)
    for continuation, score in zip(continuations, scores, strict=True):
        whole = llama.tokenizer.encode(context + continuation, bos=True)
        assert whole[: len(head)] == head and score.tokens == whole[len(head) :]
        with torch.no_grad():
            lp = torch.log_softmax(hf(torch.tensor([whole])).logits[0], dim=-1)
        expected = sum(float(lp[i - 1, whole[i]]) for i in range(len(head), len(whole)))
        assert score.continuation == continuation
        assert score.logprob == pytest.approx(expected, abs=1e-4)
        greedy = all(int(lp[i - 1].argmax()) == whole[i] for i in range(len(head), len(whole)))
        assert score.is_greedy == greedy
    # one request, one job, nothing generated
    [job] = GenerationJob.objects.all()
    assert job.params["max_new_tokens"] == 0 and job.completion_tokens == 0


def test_tokenize_and_detokenize(published_demo, portal, demo_checkpoint):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(demo_checkpoint / "tokenizer.model"))
    ids = portal.tokenize("The river begins", model="demo")
    assert ids == [1, *sp.encode("The river begins")]
    assert portal.tokenize("The river", model="demo", add_special_tokens=False) == sp.encode(
        "The river"
    )
    assert portal.detokenize(ids, model="demo") == "The river begins"


def test_stream_with_several_prompts_yields_every_choice(jobs_worker, published_demo, portal):
    pieces = list(portal.stream("demo", ["The model", "A question"], max_new_tokens=5, seed=2, n=2))
    job = GenerationJob.objects.get()
    texts: dict[int, str] = {}
    for piece in pieces:
        texts[piece.index] = texts.get(piece.index, "") + piece
    assert texts == {o["index"]: o["text"] for o in job.outputs}
    assert set(texts) == {0, 1, 2, 3}


def test_unknown_keyword_arguments_are_type_errors(portal):
    with pytest.raises(TypeError, match="max_tokens"):
        portal.submit("demo", "x", max_tokens=5)
    with pytest.raises(TypeError, match="temprature"):
        portal.generate("demo", "x", temprature=0)
    with pytest.raises(TypeError):
        portal.score("x", [" y"], model="demo", echo=True)


@pytest.mark.parametrize("suffix", ["/v1", "/api/v1", "/api/v1/"])
def test_a_base_url_with_the_api_path_gets_a_message_saying_so(suffix):
    from portal_client import Client, PortalClientError

    with pytest.raises(PortalClientError) as error:
        Client(f"https://portal.example.org{suffix}", "llp_x", progress=False)
    message = str(error.value)
    assert "without" in message and "Client('https://portal.example.org'" in message

"""The official `openai` Python SDK against a running Tollgate gateway.

Started by the Rust integration test `python_sdk` (tests/it/python_sdk.rs),
which runs a real gateway in front of the mock upstream and passes its URL
and client keys in the environment.
"""

import os

import openai
import pytest
from openai import OpenAI

BASE_URL = os.environ["TOLLGATE_BASE_URL"]
KEY = os.environ["TOLLGATE_API_KEY"]
LEADS_KEY = os.environ["TOLLGATE_LEADS_KEY"]


@pytest.fixture()
def client():
    return OpenAI(base_url=BASE_URL, api_key=KEY, max_retries=0)


def test_chat_completion_with_charges_in_headers(client):
    raw = client.chat.completions.with_raw_response.create(
        model="pro-ok",
        messages=[{"role": "user", "content": "Where is my parcel?"}],
        extra_headers={"x-tollgate-tag-ticket": "T-7"},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage.prompt_tokens > 0
    assert raw.headers["x-tollgate-model"] == "mini-ok"
    assert raw.headers["x-tollgate-units"] == "ticket=1;answer=1"
    assert raw.headers["x-request-id"].startswith("req_")
    # Exact decimal strings, never floats.
    assert "e" not in raw.headers["x-tollgate-cost"].lower()


def test_streaming_with_usage_carries_tollgate_figures(client):
    stream = client.chat.completions.create(
        model="mini-ok",
        messages=[{"role": "user", "content": "Tell me something"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    final = chunks[-1]
    assert final.usage is not None and final.usage.completion_tokens > 0
    figures = final.model_extra["tollgate"]
    assert figures["model"] == "mini-ok"
    assert float(figures["total"]) >= float(figures["provider_cost"])  # test arithmetic only


def test_streaming_without_usage_has_no_usage_chunk(client):
    stream = client.chat.completions.create(
        model="mini-ok",
        messages=[{"role": "user", "content": "Stream please"}],
        stream=True,
    )
    chunks = list(stream)
    assert chunks
    assert all(c.usage is None for c in chunks)


def test_embeddings(client):
    result = client.embeddings.create(model="embed-ok", input=["alpha beta", "gamma"])
    assert len(result.data) == 2
    assert len(result.data[0].embedding) > 0
    assert result.usage.prompt_tokens > 0


def test_models_lists_what_the_client_may_use(client):
    ids = {m.id for m in client.models.list()}
    assert {"mini-ok", "pro-ok", "embed-ok"} <= ids


def test_errors_map_to_the_sdks_exceptions(client):
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=BASE_URL, api_key="tg_live_wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "x"}])
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="mini-ok", messages=[{"role": "wizard", "content": "x"}])
    assert err.value.body["param"] == "messages[0].role"
    leads = OpenAI(base_url=BASE_URL, api_key=LEADS_KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError) as err:
        leads.chat.completions.create(
            model="mini-ok",
            messages=[{"role": "user", "content": "score"}],
            metadata={"lead": "L-1"},
        )
    assert err.value.body["code"] == "plugin_rejected"

#!/usr/bin/env python3
"""Issue 16: the official `openai` Python package against a market node.

    python3 scripts/openai_check.py BASE_URL API_KEY MODEL

Lists the models, asks a chat question whole and streamed, asks a completion, checks the
errors a client sees for an unknown model and a bad key, and reads each answer's receipt.
Prints one JSON line with what it saw; exits non-zero on any failure.
"""
import json
import sys
import urllib.request

import openai
from openai import OpenAI

base, key, model = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
client = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=600)
seen = {}

ids = [m.id for m in client.models.list()]
assert model in ids, f"{model} not in {ids}"
seen["models"] = ids

question = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
raw = client.chat.completions.with_raw_response.create(
    model=model, messages=question, max_tokens=16, temperature=0
)
whole = raw.parse()
receipt = raw.headers["x-market-receipt"]
answer = whole.choices[0].message.content
assert "Paris" in answer, answer
assert whole.id == "chatcmpl-" + receipt, (whole.id, receipt)
assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
seen["answer"] = answer
seen["usage"] = whole.usage.model_dump()

pieces, usage = [], None
stream = client.chat.completions.create(
    model=model, messages=question, max_tokens=16, temperature=0, stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    if chunk.usage:
        usage = chunk.usage
assert "".join(pieces) == answer, (pieces, answer)
assert usage is not None and usage.total_tokens == whole.usage.total_tokens
seen["streamed_pieces"] = len(pieces)

completion = client.completions.create(model=model, prompt="The capital of Germany is", max_tokens=4, temperature=0)
seen["completion"] = completion.choices[0].text

try:
    client.chat.completions.create(model="no-such-model", messages=question)
    raise AssertionError("an unknown model was answered")
except openai.NotFoundError as e:
    assert e.body["code"] == "model_not_found", e.body
try:
    OpenAI(base_url=base + "/v1", api_key="mk-" + "0" * 64, max_retries=0).models.list()
    OpenAI(base_url=base + "/v1", api_key="mk-" + "0" * 64, max_retries=0).chat.completions.create(
        model=model, messages=question
    )
    raise AssertionError("a bad key was served")
except openai.AuthenticationError as e:
    assert e.body["code"] == "invalid_api_key", e.body

request = urllib.request.Request(base + "/v1/receipts/" + receipt, headers={"Authorization": "Bearer " + key})
with urllib.request.urlopen(request) as r:
    body = json.load(r)
assert body["id"] == receipt and body["status"] in ("pending", "verified"), body
assert json.loads(body["record"])["text"] == answer
seen["receipt"] = {"id": receipt, "status": body["status"], "worker": body["worker"], "cost": body["cost"]}
print(json.dumps(seen))

"""Acceptance of issue 19: a client generated from the node's OpenAPI document by
openapi-python-client registers, posts a task, follows it to settlement and fetches its result,
every answer parsed into the generated models. Signing is the one thing a generator cannot
write: `Sign` is the httpx.Auth a client adds (marketsign.py holds the scheme).

usage: python3 client_flow.py CLIENT_DIR BASE_URL KEY_FILE   (exit 1 on any failure)"""
import json
import os
import sys
import time

import httpx

sys.path.insert(0, sys.argv[1])
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import marketsign  # noqa: E402
from market_node_api_client import Client  # noqa: E402
from market_node_api_client.api.accounts import register  # noqa: E402
from market_node_api_client.api.tasks import get_result, get_task, post_task  # noqa: E402
from market_node_api_client.models.task_result import TaskResult  # noqa: E402
from market_node_api_client.models.task_view import TaskView  # noqa: E402

KEY = marketsign.Key(sys.argv[3])


class Sign(httpx.Auth):
    """Signs each request as the node checks it (market/src/auth.rs)."""

    requires_request_body = True

    def auth_flow(self, request):
        body = request.content
        pq = request.url.raw_path.decode()
        digest = marketsign.request_digest(request.method, pq, body)
        for k, v in KEY.sign_request(request.method, pq, body, digest_hex=digest).items():
            request.headers[k] = v
        yield request


def main():
    client = Client(base_url=sys.argv[2], httpx_args={"auth": Sign()}, raise_on_unexpected_status=True)
    r = register.sync_detailed(client=client)
    assert r.status_code == 201, (r.status_code, r.content)
    envelope, task_id = KEY.sign_message("market/v1/TaskSpec", marketsign.small_task(KEY.account, "inference"))
    from market_node_api_client.models.signed_task_spec import SignedTaskSpec  # noqa: E402

    r = post_task.sync_detailed(client=client, body=SignedTaskSpec.from_dict(envelope))
    assert r.status_code == 201, (r.status_code, r.content)
    assert isinstance(r.parsed, TaskView), type(r.parsed)
    assert r.parsed.id == task_id, (r.parsed.id, task_id)
    state = None
    for _ in range(240):
        r = get_task.sync_detailed(id=task_id, client=client)
        assert isinstance(r.parsed, TaskView), (r.status_code, r.content)
        state = json.loads(r.content)["state"]["state"]
        if state in ("settled", "rejected", "cancelled"):
            break
        time.sleep(0.5)
    assert state == "settled", state
    r = get_result.sync_detailed(id=task_id, client=client)
    assert isinstance(r.parsed, TaskResult), (r.status_code, r.content)
    assert len(r.parsed.outputs) == 2 and len(r.parsed.items) == 2, r.parsed
    print(f"generated client: posted {task_id}, followed it to settled, read {r.parsed.items}")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"generated client flow failed: {e!r}")
        sys.exit(1)

#!/usr/bin/env python3
"""Drives the node's web dashboard in headless Chromium (Playwright) against a running node with
settled, slashed and pooled tasks (a `market-devnet --keep`), and checks what a visitor sees
against the API: every page renders without a console error, the loss curves and the verdicts'
evidence are the API's, the pooled task's held-out losses are its rounds', the in-browser ledger
verifier says verified for the node's export and names the forged entry of a tampered copy,
statements computed in the browser agree with the node's balances, and (given the buyer's key
file) a buyer's results are fetched with a request signed in the browser and the downloaded
weights hash to their id. Saves a screenshot of each page in OUT.

Usage: dashboard-check.py API_URL OUT_DIR [--buyer-key FILE]
Needs: pip install playwright==1.58.0, and Chromium (Debian's `chromium`, or CHROMIUM=path).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright


def get(api, path):
    with urllib.request.urlopen(api + path, timeout=30) as r:
        return r.read()


def get_json(api, path):
    return json.loads(get(api, path))


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def chromium_path():
    for p in [os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")]:
        if p and Path(p).exists():
            return p
    sys.exit("dashboard-check: no Chromium found (apt-get install chromium, or set CHROMIUM)")


def close(a, b, what):
    check(a is None and b is None or (a is not None and b is not None and abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))), f"{what}: page {a} vs API {b}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("api")
    ap.add_argument("out")
    ap.add_argument("--buyer-key")
    ap.add_argument("--submit", nargs=2, metavar=("MARKET_NODE", "TASK_FILE"), help="post this task with the buyer's key while the tasks page is open: it must appear and move without a reload (live updates)")
    args = ap.parse_args()
    api = args.api.rstrip("/")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    tasks = get_json(api, "/v1/tasks?limit=100")["tasks"]
    workers = get_json(api, "/v1/workers")
    verifiers = get_json(api, "/v1/verifiers")
    head = get_json(api, "/v1/ledger/head")
    export = get(api, "/v1/ledger/export").decode()

    failed = [t for t in tasks if any(not v["passed"] for a in t["attempts"] for v in a["verdicts"])]
    trained = [t for t in tasks if any(a.get("loss_trace") for a in t["attempts"])]
    trained.sort(key=lambda t: t in failed)  # one without a failed run first
    pooled = [t for t in tasks if t.get("pool", {}).get("part") == "task"]
    settled = [t for t in tasks if t["state"]["state"] == "settled"]
    check(trained and failed and pooled and settled, f"the node needs trained, failed, pooled and settled tasks: {len(trained)} {len(failed)} {len(pooled)} {len(settled)}")

    errors = []
    seen = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url} {r.failure}") if "/v1/events" not in r.url else None)
        page.on("response", lambda r: errors.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)

        def visit(route, shot):
            if not seen:
                page.goto(f"{api}/dashboard/#/{route}")
            elif page.evaluate("location.hash") == f"#/{route}":
                page.reload()
            else:
                # As a visitor clicking a link: the page routes on the new fragment.
                page.evaluate("r => { document.body.dataset.ready = 'false'; location.hash = r; }", f"#/{route}")
            page.wait_for_selector("body[data-ready=true]", timeout=30000)
            check(page.locator(".error-box").count() == 0, f"{route}: {page.locator('.error-box').all_inner_texts()}")
            seen.append(shot)
            return shot

        def shoot(name):
            # No value rendered as a JavaScript accident.
            stray = page.evaluate("""() => [...document.querySelectorAll('main, main *')].flatMap(e => [...e.childNodes])
                .filter(n => n.nodeType === 3 && /^(null|undefined|NaN|\\[object Object\\])$/.test(n.textContent.trim())).length""")
            check(stray == 0, f"{name}: {stray} text node(s) saying null/undefined/NaN")
            page.screenshot(path=str(out / f"{name}.png"), full_page=True)

        # Tasks: one row per task the API lists.
        visit("tasks", "tasks")
        rows = page.locator("[data-testid=tasks] tbody tr")
        check(rows.count() == len(tasks), f"tasks page shows {rows.count()} rows, API {len(tasks)}")
        for t in tasks:
            state = page.locator(f"tr[data-task='{t['id']}'] [data-state]").get_attribute("data-state")
            check(state == t["state"]["state"], f"task {t['id']} state {state} vs {t['state']['state']}")
        check(page.locator("#live.on").count() == 1, "live updates are connected")
        shoot("tasks")

        # A trained task: its loss curve is the committed loss_trace the API shows.
        t = trained[0]
        visit(f"task/{t['id']}", "task")
        check(page.locator("[data-testid=loss-chart] polyline").count() >= 1, "a loss curve is drawn")
        n = 0
        for ai, a in enumerate(t["attempts"]):
            for s, loss in enumerate(a.get("loss_trace", [])):
                cell = page.locator(f"[data-testid=loss-table] tr[data-attempt='{ai}'][data-segment='{s}']")
                got = cell.get_attribute("data-loss")
                close(None if got == "null" else got, loss, f"task {t['id']} attempt {ai} segment {s} loss")
                n += 1
        check(n > 0, "losses compared")
        detection = page.locator("[data-testid=audit-plan] [data-testid=detection]").first.inner_text()
        check(f"{t['audit']['detection_probability'] * 100:.4f}" in detection, f"detection {detection} vs {t['audit']['detection_probability']}")
        shoot("task-trained")

        # A task whose audit failed: each verdict's evidence (segments, failing segment and step).
        t = failed[0]
        visit(f"task/{t['id']}", "task")
        compared = 0
        for ai, a in enumerate(t["attempts"]):
            for v in a["verdicts"]:
                row = page.locator(f"[data-testid=verdicts-{ai}] tr[data-verdict='{v['verdict_id']}']")
                check(row.count() == 1, f"verdict {v['verdict_id']} shown")
                field = lambda f: row.locator(f"[data-field={f}]").inner_text()
                check(field("segments") == ", ".join(str(s) for s in v["segments"]), f"segments {field('segments')} vs {v['segments']}")
                check(field("failed_segment") == ("" if v.get("failed_segment") is None else str(v["failed_segment"])), "failed segment")
                check(field("failed_step") == ("" if v.get("failed_step") is None else str(v["failed_step"])), "failed step")
                check(field("reason") == (v.get("reason") or ""), "reason")
                compared += 1
        check(compared > 0 and any(v.get("failed_segment") is not None for a in t["attempts"] for v in a["verdicts"]), "a failing verdict's evidence was compared")
        shoot("task-slashed")

        # The pooled task: held-out loss per round, and the rounds' slots.
        t = pooled[0]
        visit(f"task/{t['id']}", "task")
        history = t["pool"]["history"]
        check(len(history) > 0, "the pooled task merged rounds")
        for r in history:
            got = page.locator(f"[data-testid=rounds] tr[data-round='{r['round']}']").get_attribute("data-eval-loss")
            close(None if got == "null" else got, r.get("eval_loss"), f"round {r['round']} held-out loss")
        check(page.locator("[data-testid=eval-chart] polyline").count() >= 1, "held-out loss curve drawn")
        shoot("task-pooled")

        # Participants: everyone the API lists, with earnings from statements verified here.
        visit("participants", "participants")
        everyone = workers + verifiers
        check(page.locator("[data-testid=participants] tbody tr").count() == len(everyone), "one row per participant")
        page.wait_for_function("() => [...document.querySelectorAll('[data-earned]')].every(c => /^-?[0-9]+$/.test(c.textContent))", timeout=60000)
        shoot("participants")

        # A worker's statement: verified in the browser, and it agrees with the node's balance.
        w = max(workers, key=lambda p: p["stats"]["tasks_done"])
        visit(f"account/{w['account']}", "account")
        check(page.locator("[data-testid=agreement]").get_attribute("data-agree") == "true", "statement balance agrees with the API")
        account = get_json(api, f"/v1/accounts/{w['account']}")
        lines = page.locator("[data-testid=statement] tbody tr").count()
        check(lines > 0, "statement lines")
        check(page.locator("[data-testid=api-balance]").inner_text() == str(account["balance"]), "balance shown")
        shoot("statement")

        # The ledger: the node's export verified here; a tampered copy names its forged entry.
        visit("ledger", "ledger")
        check(page.locator("[data-testid=head-entries]").inner_text() == str(head["body"]["seq"] + 1), "head entries")
        page.click("[data-testid=verify-node]")
        res = page.wait_for_selector("[data-testid=verify-result]", timeout=60000)
        check(res.get_attribute("data-verified") == "true", f"the node's export verifies: {res.inner_text()}")
        page.wait_for_function("() => document.querySelectorAll('[data-testid=entries] [data-check]').length == document.querySelectorAll('[data-testid=entries] tbody tr').length", timeout=60000)
        check(page.locator("[data-testid=entries] [data-check=differs]").count() == 0, "every entry shown is the verified one")
        entries = int(res.get_attribute("data-entries"))
        check(entries >= head["body"]["seq"] + 1, f"{entries} entries verified")
        lines = export.split("\n")
        forged = lines[5].replace('"amount":', '"amount":1', 1)
        check(forged != lines[5], "entry 5 has an amount to forge")
        tampered = out / "tampered-export.jsonl"
        tampered.write_text("\n".join(lines[:5] + [forged] + lines[6:]))
        page.set_input_files("[data-testid=export-file]", str(tampered))
        page.wait_for_function("() => document.querySelectorAll('[data-testid=verify-result]').length == 2", timeout=60000)
        bad = page.locator("[data-testid=verify-result]").nth(1)
        check(bad.get_attribute("data-verified") == "false" and bad.get_attribute("data-seq") == "5", f"tampered export: {bad.inner_text()}")
        shoot("ledger")
        # A node whose entries page says other than its export: the row is flagged.
        def forged_entries(route):
            body = json.loads(route.fetch().body())
            body["entries"][-1]["body"]["key"] += "-forged"
            route.fulfill(status=200, body=json.dumps(body), headers={"content-type": "application/json"})
        page.route("**/v1/ledger/entries*", forged_entries)
        page.reload()
        page.wait_for_selector("body[data-ready=true]", timeout=30000)
        page.click("[data-testid=verify-node]")
        page.wait_for_selector("[data-testid=entries] [data-check]", timeout=60000)
        check(page.locator("[data-testid=entries] [data-check=differs]").count() == 1, "the forged entry is flagged")
        page.unroute("**/v1/ledger/entries*")
        # A node repeating a row: flagged too (each row must be its own entry, in order).
        def repeated_entries(route):
            body = json.loads(route.fetch().body())
            body["entries"].insert(len(body["entries"]) - 1, body["entries"][-1])
            route.fulfill(status=200, body=json.dumps(body), headers={"content-type": "application/json"})
        page.route("**/v1/ledger/entries*", repeated_entries)
        page.reload()
        page.wait_for_selector("body[data-ready=true]", timeout=30000)
        page.click("[data-testid=verify-node]")
        page.wait_for_selector("[data-testid=entries] [data-check]", timeout=60000)
        check(page.locator("[data-testid=entries] [data-check=differs]").count() >= 1, "a repeated entry is flagged")
        page.unroute("**/v1/ledger/entries*")

        # A buyer's results, signed in the browser with its key file.
        if args.buyer_key:
            buyer = json.loads(Path(args.buyer_key).read_text())["account"]
            mine = [t for t in settled if t["buyer"] == buyer and t["kind"] == "training" and not t.get("pool")]
            check(mine, "a settled training task of the buyer")
            t = mine[0]
            accepted = next(a for a in t["attempts"] if a["accepted"])
            commit = get_json(api, f"/v1/ledger/entries?from={accepted['commit_seq']}&limit=1")["entries"][0]
            outputs = commit["body"]["kind"]["commit"]["commitment"]["body"]["outputs"]
            visit(f"task/{t['id']}", "task")
            page.set_input_files("[data-testid=key-file]", args.buyer_key)
            page.click("[data-testid=show-results]")
            page.wait_for_selector("[data-testid=outputs]", timeout=30000)
            shown = page.locator("[data-testid=outputs] tr[data-output]").evaluate_all("rs => rs.map(r => r.dataset.output)")
            check(shown == outputs, f"results {shown} vs the committed outputs {outputs}")
            page.click(f"button[data-blob='{outputs[0]}']")
            page.wait_for_selector("[data-check]", timeout=60000)
            check(page.locator("[data-check]").get_attribute("data-check") == "match", "the downloaded weights hash to their id")
            shoot("results")
            # A node that serves other bytes under the id: the page refuses to offer them.
            def lying_node(route):
                body = bytearray(route.fetch().body())
                body[-1] ^= 1
                route.fulfill(status=200, body=bytes(body), headers={"content-type": "application/octet-stream"})
            page.route(f"**/v1/blobs/{outputs[0]}", lying_node)
            page.click("[data-testid=show-results]")
            page.wait_for_selector(f"button[data-blob='{outputs[0]}']", timeout=30000)
            page.click(f"button[data-blob='{outputs[0]}']")
            page.wait_for_selector("[data-check]", timeout=60000)
            check(page.locator("[data-check]").get_attribute("data-check") == "mismatch", "altered bytes are refused")
            page.unroute(f"**/v1/blobs/{outputs[0]}")
            # A node that lists a result the ledger's accepted commitment does not name: the
            # page does not offer it.
            stranger = "ab" * 32
            def extra_output(route):
                body = json.loads(route.fetch().body())
                body["outputs"].append(stranger)
                body["items"].append("")
                route.fulfill(status=200, body=json.dumps(body), headers={"content-type": "application/json"})
            page.route(f"**/v1/tasks/{t['id']}/result", extra_output)
            page.click("[data-testid=show-results]")
            page.wait_for_selector(f"tr[data-output='{stranger}'] [data-check]", timeout=30000)
            check(page.locator(f"tr[data-output='{stranger}'] [data-check]").get_attribute("data-check") == "unreleased", "an output the ledger does not name is not offered")
            check(page.locator(f"button[data-blob='{stranger}']").count() == 0, "no download button for it")
            page.unroute(f"**/v1/tasks/{t['id']}/result")
            check(page.locator("[data-testid=results-basis]").get_attribute("data-basis") == "release", "a plain task's results rest on its release")
            # A node calling this plain task pooled (to skip the release check): the page
            # reads what the task is from the verified ledger, not from the node.
            def claims_pooled(route):
                body = json.loads(route.fetch().body())
                body["pool"] = {"part": "task", "slots": 3, "rounds": 1, "round": 1, "global": "00" * 32, "budget": 1, "slot_tasks": [], "history": []}
                route.fulfill(status=200, body=json.dumps(body), headers={"content-type": "application/json"})
            page.route(f"**/v1/tasks/{t['id']}", claims_pooled)
            page.route(f"**/v1/tasks/{t['id']}/result", extra_output)
            page.reload()
            page.wait_for_selector("body[data-ready=true]", timeout=30000)
            page.set_input_files("[data-testid=key-file]", args.buyer_key)
            page.click("[data-testid=show-results]")
            page.wait_for_selector(f"tr[data-output='{stranger}'] [data-check]", timeout=30000)
            check(page.locator("[data-testid=results-basis]").get_attribute("data-basis") == "release", "the ledger, not the node, says the task is not pooled")
            check(page.locator(f"tr[data-output='{stranger}'] [data-check]").get_attribute("data-check") == "unreleased", "still not offered")
            page.unroute(f"**/v1/tasks/{t['id']}")
            page.unroute(f"**/v1/tasks/{t['id']}/result")
            # And the pooled task, whatever the node says of it, is pooled in the ledger.
            p = pooled[0]
            def claims_plain(route):
                body = json.loads(route.fetch().body())
                body.pop("pool", None)
                route.fulfill(status=200, body=json.dumps(body), headers={"content-type": "application/json"})
            page.route(f"**/v1/tasks/{p['id']}", claims_plain)
            visit(f"task/{p['id']}", "task")
            page.set_input_files("[data-testid=key-file]", args.buyer_key)
            page.click("[data-testid=show-results]")
            page.wait_for_selector("[data-testid=results-basis]", timeout=30000)
            check(page.locator("[data-testid=results-basis]").get_attribute("data-basis") == "pooled", "a pooled task is never shown as checked against a release")
            page.unroute(f"**/v1/tasks/{p['id']}")
            try:
                urllib.request.urlopen(f"{api}/v1/tasks/{t['id']}/result", timeout=30)
                check(False, "an unsigned request read the results")
            except urllib.error.HTTPError as e:
                check(e.code == 401, f"unsigned results request: {e.code}")

        # Live updates: a task posted while the tasks page is open appears and moves on it
        # without a reload (the page follows /v1/events).
        if args.submit and args.buyer_key:
            visit("tasks", "tasks")
            page.evaluate("window.__sameDocument = true")
            cli, task_file = args.submit
            posted = subprocess.run([cli, "task", "submit", task_file, "--key", args.buyer_key, "--node", api], capture_output=True, text=True, timeout=120, env={**os.environ, "RUST_BACKTRACE": "0"})
            check(posted.returncode == 0, f"posting a task: {posted.stderr}")
            page.wait_for_function(f"() => document.querySelectorAll('[data-testid=tasks] tbody tr').length == {len(tasks) + 1}", timeout=60000)
            known = json.dumps([t["id"] for t in tasks])
            new_row = f"[...document.querySelectorAll('[data-testid=tasks] tbody tr')].find(r => !{known}.includes(r.dataset.task))"
            # It runs to the end on its own; the page follows it there.
            page.wait_for_function(f"() => {new_row}.querySelector('[data-state]').dataset.state == 'settled'", timeout=120000)
            check(page.evaluate("window.__sameDocument") is True, "the page was not reloaded")
            shoot("tasks-live")

        browser.close()

    check(not errors, "console errors:\n" + "\n".join(errors))
    shots = sorted(p.name for p in out.glob("*.png"))
    print(f"dashboard check: ok ({len(tasks)} tasks, {len(everyone)} participants, {entries} ledger entries verified in the browser, forged entry 5 named); screenshots in {out}: {', '.join(shots)}")


if __name__ == "__main__":
    main()

"""Checks the compute vectors with this independent port of the `repro` profile, written from
spec/COMPUTE.md and spec/ENCODING.md alone (no Rust read): every checkpoint hash, segment loss
and output of compute-cases.json and compute-mlp.json, and every inference item, leaf, root and
final_state_hash of compute-inference.json, and every field of compute-llama.json (parameters,
prompt, prefill logits, each answer and its record hash; llama.py), and every checkpoint, segment
loss and output of compute-llama-train.json (llama_train.py), and the piece ends and token stream
of compute-text.json (a text dataset, section 3: pieces of at most 4096 bytes, a newline ending
one only once it holds 1024, under 11.7's tokenizer; text.py, needs `pip install
tokenizers==0.23.2`; 11.7's byte table, its `aéb` example and its merge-string rule are checked
against the crate first, a failure there failing the text rows), and the same token stream from
the vector's `tokenizer_json` read by 11.7a (hf_tokenizer.py). Builds libm.c (Appendix C of
COMPUTE.md) first. Checks every file, then exits 1 if anything mismatched.
Usage: python3 spec/reference/compute/check.py"""
import contextlib, io, json, os, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(HERE, "..", "..", "vectors")


def build_libm():
    out = os.path.join(HERE, "libm_repro.so")
    subprocess.run(
        ["cc", "-O2", "-ffp-contract=off", "-shared", "-fPIC", "-o", out, os.path.join(HERE, "libm.c"), "-lm"],
        check=True,
    )


def main():
    build_libm()
    sys.path.insert(0, HERE)
    import run  # noqa: E402  (needs the library built above)
    import infer_lib  # noqa: E402
    import llama  # noqa: E402
    import llama_train  # noqa: E402
    import text  # noqa: E402

    failures, checked = 0, 0
    for name in ["compute-cases.json", "compute-mlp.json"]:
        for v in json.load(open(os.path.join(VECTORS, name)))["vectors"]:
            blobs = {k: bytes.fromhex(b) for k, b in v.get("blobs", {}).items()}
            with contextlib.redirect_stdout(io.StringIO()):
                got, outputs = run.train(v["task"], blobs)
            want = v["checkpoints"]
            ok = len(got) >= len(want) and all(
                all(a.get(k) == e.get(k) for k in e) for a, e in zip(got, want)
            )
            if "outputs" in v:
                ok = ok and outputs == v["outputs"]
            checked += 1
            failures += not ok
            print(f"{name:<24} {v['name']:<42} {'ok' if ok else 'MISMATCH'}")
    path = os.path.join(VECTORS, "compute-inference.json")
    for v in json.load(open(path))["vectors"]:
        blobs = {k: bytes.fromhex(b) for k, b in v.get("blobs", {}).items()}
        items, leaves, root, final = infer_lib.infer(v["task"], blobs)
        ok = (
            [i.hex() for i in items] == [e["bytes_hex"] for e in v["items"]]
            and [l.hex() for l in leaves] == [e["leaf"] for e in v["items"]]
            and root == v["root"]
            and final == v["final_state_hash"]
        )
        checked += 1
        failures += not ok
        print(f"{'compute-inference.json':<24} {v['name']:<42} {'ok' if ok else 'MISMATCH'}")
    for field, ok in llama.check(verbose=False):
        checked += 1
        failures += not ok
        print(f"{'compute-llama.json':<24} {field:<42} {'ok' if ok else 'MISMATCH'}")
    for field, ok in llama_train.check(verbose=False):
        checked += 1
        failures += not ok
        print(f"{'compute-llama-train.json':<24} {field:<42} {'ok' if ok else 'MISMATCH'}")
    try:
        results = text.fields()
    except Exception as e:  # tokenizers missing or another version, or 11.7's statements failing: not a skip
        results = [("tokenizer", False, f"{type(e).__name__}: {e}")]
    try:  # the same tokenizer as a Hugging Face tokenizer.json, read by 11.7a (hf_tokenizer.py)
        import hf_tokenizer  # noqa: E402
        results += hf_tokenizer.fields()
    except Exception as e:  # a refusal of the vector's file counts as a mismatch, not a skip
        results.append(("tokenizer_json tokens", False, f"{type(e).__name__}: {e}"))
    for field, ok, msg in results:
        checked += 1
        failures += not ok
        print(f"{'compute-text.json':<24} {field:<42} {'ok' if ok else 'MISMATCH ' + msg}")
    print(f"{checked - failures} of {checked} compute vectors reproduced bit for bit")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

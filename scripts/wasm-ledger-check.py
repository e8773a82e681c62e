#!/usr/bin/env python3
"""Runs the ledger verifier compiled to WebAssembly (ledger/wasm), as the dashboard will in a
browser, on the spec's real export and on a tampered copy: the module must say `verified` for
the first and name the forged entry for the second. Uses only the module's plain interface
(`alloc`, `verify`, memory), as a page does. Usage: wasm-ledger-check.py MODULE.wasm"""

import json
import sys
from pathlib import Path

import wasmtime


def run(module_path, text):
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    module = wasmtime.Module.from_file(engine, module_path)
    # The module must import nothing: a page instantiates it with no glue.
    assert not module.imports, [i.name for i in module.imports]
    instance = wasmtime.Instance(store, module, [])
    exports = instance.exports(store)
    memory, alloc, verify = exports["memory"], exports["alloc"], exports["verify"]
    data = text.encode()
    ptr = alloc(store, len(data))
    memory.write(store, data, ptr)
    packed = verify(store, ptr, len(data))
    at, length = packed >> 32, packed & 0xFFFFFFFF
    return json.loads(memory.read(store, at, at + length))


def main():
    module_path = sys.argv[1]
    export = (Path(__file__).resolve().parent.parent / "spec/vectors/export.jsonl").read_text()
    ok = run(module_path, "\n" + export)
    assert ok["verified"] is True and ok["entries"] == 93, ok
    lines = export.split("\n")
    forged_line = lines[5].replace('"amount":', '"amount":1', 1)
    assert forged_line != lines[5]
    forged = "\n".join(lines[:5] + [forged_line] + lines[6:])
    bad = run(module_path, "\n" + forged)
    assert bad["verified"] is False and bad["seq"] == 5 and bad["line"] == 6, bad
    print(f"wasm ledger check: ok ({ok['entries']} entries verified; forged entry {bad['seq']} named: {bad['error']})")


if __name__ == "__main__":
    main()

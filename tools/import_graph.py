#!/usr/bin/env python3
"""The module import graph of src/: module count, arrow count and cycles.

A node is a top-level module or one of its direct children (`backend`,
`backend::cuda`, `llc::sampler`); deeper files fold into their grandparent
(`backend/cpu/matmul.rs` is `backend::cpu`). Modules are found by following
`mod NAME;` declarations from src/lib.rs (the library) and src/main.rs (the
binary: its nodes are prefixed `bin:`, its root is `bin:main`, and its
`hgpt::` paths point into the library). An arrow A -> B means code in A names
B through a path: `use` trees (`crate::`, `super::`, `self::`, a declared
child, or `hgpt::` from the binary) and the same paths written inline in
code, comments and strings stripped. Arrows from a module to its own ancestor
are left out: a child sees its parent's items by Rust's scoping (a backend
implementing `super::Backend`), so the arrow a parent draws to its child is
the one that says who depends on whom. A cycle is a strongly connected
component of more than one node.

Usage: python3 tools/import_graph.py [SRC_DIR] [--arrows]
"""

import os
import re
import sys

MOD_DECL = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", re.M)
USE = re.compile(r"\buse\s+([^;]+);")
INLINE = re.compile(r"(?<![\w:])(\w+)((?:::\w+)+)")


def strip(text):
    """Source without comments and string literals (so paths in docs don't count)."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text


def use_paths(tree):
    """Expand a use tree (`a::{b, c::{d, e}}`) into its leaf paths."""
    tree = re.sub(r"\s+as\s+\w+", "", tree)
    tree = re.sub(r"\s+", "", tree)
    out = []

    def walk(prefix, t):
        depth, start, parts = 0, 0, []
        for i, ch in enumerate(t):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append(t[start:i])
                start = i + 1
        parts.append(t[start:])
        for part in filter(None, parts):
            brace = part.find("{")
            if brace >= 0 and part.endswith("}"):
                head = [s for s in part[:brace].split("::") if s]
                walk(prefix + head, part[brace + 1 : -1])
            else:
                out.append(prefix + [s for s in part.split("::") if s])

    walk([], tree)
    return out


def discover(src):
    """{module path tuple: (file, crate)} by following `mod` declarations."""
    modules = {}

    def visit(path, file, crate):
        modules[path] = (file, crate)
        text = strip(open(file, encoding="utf-8").read())
        here = os.path.dirname(file)
        if os.path.basename(file) not in ("mod.rs", "lib.rs", "main.rs"):
            here = os.path.join(here, os.path.splitext(os.path.basename(file))[0])
        for name in MOD_DECL.findall(text):
            for cand in (os.path.join(here, name + ".rs"), os.path.join(here, name, "mod.rs")):
                if os.path.exists(cand):
                    visit(path + (name,), cand, crate)
                    break

    visit((), os.path.join(src, "lib.rs"), "lib")
    lib = dict(modules)
    modules.clear()
    if os.path.exists(os.path.join(src, "main.rs")):
        visit((), os.path.join(src, "main.rs"), "bin")
    return lib, dict(modules)


def node(crate, path):
    if crate == "bin":
        return "bin:" + ("::".join(path[:2]) if path else "main")
    return "::".join(path[:2]) if path else "(lib root)"


def resolve(path, here, crate, known):
    """The module a path names, as a tuple, or None for another crate's path."""
    if not path:
        return None
    head, rest = path[0], path[1:]
    if head == "crate":
        base, crate_of = (), crate
    elif head == "hgpt" and crate == "bin":
        base, crate_of = (), "lib"
    elif head in ("super", "self"):
        base, crate_of = here, crate
        while path and path[0] in ("super", "self"):
            if path[0] == "super":
                base = base[:-1]
            path = path[1:]
        rest = path
    elif here + (head,) in known[crate]:
        base, crate_of, rest = here, crate, path
    else:
        return None
    target = tuple(base)
    for seg in rest:
        if target + (seg,) in known[crate_of]:
            target = target + (seg,)
        else:
            break
    return crate_of, target


def graph(src):
    lib, bin_ = discover(src)
    known = {"lib": lib, "bin": bin_}
    nodes, arrows = set(), set()
    for crate, mods in known.items():
        for here, (file, _) in mods.items():
            me = node(crate, here)
            nodes.add(me)
            text = strip(open(file, encoding="utf-8").read())
            paths = [p for tree in USE.findall(text) for p in use_paths(tree)]
            rest = USE.sub(" ", text)
            paths += [[m.group(1)] + m.group(2).split("::")[1:] for m in INLINE.finditer(rest)]
            for p in paths:
                hit = resolve(p, here, crate, known)
                if hit is None:
                    continue
                crate_of, target = hit
                if crate_of == crate and here[: len(target)] == target:
                    continue  # the module itself or one of its ancestors
                other = node(crate_of, target)
                if other != me:
                    arrows.add((me, other))
    if not any("(lib root)" in arrow for arrow in arrows):
        nodes.discard("(lib root)")  # lib.rs only declares the modules
    return nodes, arrows


def cycles(nodes, arrows):
    """Tarjan's strongly connected components with more than one node."""
    out = {n: [] for n in nodes}
    for a, b in arrows:
        out.setdefault(a, []).append(b)
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def connect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in out.get(v, []):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(out):
        if v not in index:
            connect(v)
    return comps


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    src = args[0] if args else os.path.join(os.path.dirname(__file__), "..", "src")
    nodes, arrows = graph(src)
    comps = cycles(nodes, arrows)
    print(f"modules: {len(nodes)}")
    print(f"arrows: {len(arrows)}")
    print(f"cycles: {len(comps)}")
    for comp in comps:
        print("  " + " <-> ".join(comp))
    if "--arrows" in sys.argv:
        for a, b in sorted(arrows):
            print(f"{a} -> {b}")


if __name__ == "__main__":
    main()

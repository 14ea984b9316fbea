#!/usr/bin/env python3
"""Fails when ISA-specific code (AVX, AVX2, AVX-512) sits where a baseline
x86-64 caller can reach it without the run-time CPU check.

    tools/check_isa_symbols.py build/dev/_core.cpython-311-x86_64-linux-gnu.so

Why: the kernels' ISA translation units (`*_avx2.cpp`, `*_avx512*.cpp`) are
entered only through their entry points, after cpu_features said yes. Any
other function compiled with ISA code is a hazard: an inline function or a
template instantiation (std:: or gencore's own) emitted in an ISA unit is a
weak symbol, and the linker may keep that copy for every caller, so a
baseline caller on an AVX2-only (or pre-AVX) CPU dies with SIGILL.

What is allowed to contain VEX/EVEX instructions:
  * an ISA entry point: a function whose own name ends in _<isa>, <isa> one of
    the ISAs named in csrc/include/gencore/isa_targets.h (so a new ISA needs
    no change here), and anything nested in one (its lambdas);
  * functions in an anonymous namespace: internal linkage, never merged with
    another unit's copy (each ISA unit keeps its helpers there).
Everything else (global, weak, or hidden-and-turned-local by the link) must
be baseline code. An entry point of an AVX2-level ISA must not use AVX-512.

The check reads the whole symbol table, so it wants an unstripped module (the
build runs it before stripping); on a stripped one it can only see the
exported (.dynsym) functions and says so.

Instructions are classified from their encoding: in 64-bit mode a first byte
of C4/C5 is always a VEX prefix and 62 always EVEX (after segment/address
prefixes), and zmm, k0-k7 and xmm/ymm16-31 operands are AVX-512 only.
"""
from __future__ import annotations

import argparse
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_TARGETS_HEADER = REPO / "csrc" / "include" / "gencore" / "isa_targets.h"

FUNC_HEADER = re.compile(r"^([0-9a-f]+) <(.+)>:$")
# GNU objdump: "  1130:\t55   \tpush %rbp"; llvm-objdump: "  1130: 55     \tpushq %rbp".
INSN_LINE = re.compile(r"^\s*([0-9a-f]+):\s+([0-9a-f]{2}(?: [0-9a-f]{2})*)\s*\t(.*)$")
# Clone and partition suffixes GCC/LLVM append to a function's symbol.
CLONE_SUFFIX = re.compile(r"\.(?:constprop|isra|part|cold|lto_priv|localalias|llvm)(?:\.\d+)*$|\.\d+$")
AVX512_OPERAND = re.compile(r"%zmm\d+|%k[0-7]\b|%[xy]mm(?:1[6-9]|2\d|3[01])\b|\{1to\d+\}")
SKIPPED_PREFIXES = {0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x67}
# ISAs whose code may use AVX-512 (the rest may use AVX/AVX2 only).
AVX512_FAMILY = re.compile(r"^avx512")


def isa_names(header: pathlib.Path) -> list[str]:
    """The ISA names the project declares, from `#define GENCORE_TARGET_<isa> "..."`."""
    names = re.findall(r"^#define\s+GENCORE_TARGET_([a-z0-9_]+)\s", header.read_text(), re.M)
    if not names:
        sys.exit(f"check_isa_symbols: no GENCORE_TARGET_<isa> definitions in {header}")
    return names


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"check_isa_symbols: {' '.join(cmd)} failed:\n{proc.stderr}")
    return proc.stdout


def symbol_types(nm: str, module: str) -> tuple[dict[str, str], bool]:
    """Mangled name -> nm type letter of every defined function; second value:
    whether the full symbol table was there (False: stripped, .dynsym only)."""
    types: dict[str, str] = {}
    full = True
    out = subprocess.run([nm, "--defined-only", module], capture_output=True, text=True)
    if out.returncode != 0 or "no symbols" in out.stderr:
        full = False
        out = subprocess.run([nm, "-D", "--defined-only", module], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "TtWiu":
            types.setdefault(parts[2].split("@")[0], parts[1])
    return types, full


def demangle(names: list[str], cxxfilt: str) -> dict[str, str]:
    """Mangled -> demangled names, clone annotations (" [clone .cold]") dropped.
    Entry points are recognised by their demangled name, so a missing c++filt is fatal."""
    if not names:
        return {}
    try:
        proc = subprocess.run([cxxfilt], input="\n".join(names) + "\n", capture_output=True, text=True)
    except FileNotFoundError:
        sys.exit(f"check_isa_symbols: {cxxfilt} not found (needed to read function names)")
    if proc.returncode != 0:
        sys.exit(f"check_isa_symbols: {cxxfilt} failed:\n{proc.stderr}")
    return {n: re.sub(r"( \[clone [^\]]*\])+$", "", d) for n, d in zip(names, proc.stdout.splitlines())}


def instruction_class(raw: str, text: str) -> str | None:
    """None (legacy encoding), 'avx' (VEX) or 'avx512' (EVEX or AVX-512-only registers)."""
    data = [int(b, 16) for b in raw.split()]
    i = 0
    while i < len(data) and data[i] in SKIPPED_PREFIXES:
        i += 1
    if i >= len(data):
        return None
    if data[i] == 0x62 or AVX512_OPERAND.search(text):
        return "avx512"
    if data[i] in (0xC4, 0xC5):
        return "avx"
    return None


def scan(objdump: str, module: str) -> tuple[dict[str, tuple[str, str]], int]:
    """Mangled function name -> (widest class, first instruction of that class),
    and the number of instructions read (0 means the disassembly was not understood)."""
    found: dict[str, tuple[str, str]] = {}
    current = None
    count = 0
    proc = subprocess.Popen([objdump, "-d", "-w", module], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        header = FUNC_HEADER.match(line)
        if header:
            current = header.group(2)
            continue
        insn = INSN_LINE.match(line)
        if not insn or current is None:
            continue
        count += 1
        cls = instruction_class(insn.group(2), insn.group(3))
        if cls is None:
            continue
        seen = found.get(current)
        if seen is None or (cls == "avx512" and seen[0] != "avx512"):
            found[current] = (cls, insn.group(3).strip())
    if proc.wait() != 0:
        sys.exit(f"check_isa_symbols: {objdump} -d {module} failed")
    return found, count


def owner_isa(pretty: str, isas: list[str]) -> str | None:
    """The ISA of the entry point `pretty` is (or is nested in), else None."""
    # Longest names first, so _avx512bf16 is not read as _avx512.
    for isa in sorted(isas, key=len, reverse=True):
        if re.search(rf"_{re.escape(isa)}\(", pretty):
            return isa
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("module", help="the built extension module (.so)")
    ap.add_argument("--objdump", default="objdump")
    ap.add_argument("--nm", default="nm")
    ap.add_argument("--cxxfilt", default="c++filt")
    ap.add_argument("--targets-header", type=pathlib.Path, default=DEFAULT_TARGETS_HEADER,
                    help="header declaring GENCORE_TARGET_<isa> (default: %(default)s)")
    ap.add_argument("--expect-isa-code", action="store_true",
                    help="the build has ISA units: fail if no ISA entry point with VEX/EVEX code is found "
                         "(a check that saw nothing proves nothing)")
    ap.add_argument("--verbose", "-v", action="store_true", help="also list the allowed ISA functions")
    args = ap.parse_args(argv)

    isas = isa_names(args.targets_header)
    types, full = symbol_types(args.nm, args.module)
    found, instructions = scan(args.objdump, args.module)
    if instructions == 0:
        sys.exit(f"check_isa_symbols: read no instructions from '{args.objdump} -d {args.module}'; "
                 "output format not understood")
    pretty = demangle(sorted(found), args.cxxfilt)

    allowed, bad = [], []
    for mangled, (cls, example) in sorted(found.items()):
        name = CLONE_SUFFIX.sub("", pretty.get(mangled, mangled))
        base = CLONE_SUFFIX.sub("", mangled)
        letter = types.get(base, types.get(mangled, "t"))
        kind = {"T": "global", "W": "weak", "i": "ifunc", "u": "unique"}.get(letter, "local")
        isa = owner_isa(name, isas)
        if isa is not None:
            if cls == "avx512" and not AVX512_FAMILY.match(isa):
                bad.append((name, kind, cls, example, f"an {isa} entry point uses AVX-512"))
            else:
                allowed.append((name, cls, f"entry point ({isa})"))
        elif "(anonymous namespace)::" in name:
            allowed.append((name, cls, "internal helper"))
        else:
            bad.append((name, kind, cls, example, "not an ISA entry point"))

    where = "full symbol table" if full else "STRIPPED module: exported functions only"
    print(f"check_isa_symbols: {args.module} ({where}); ISAs {', '.join(isas)}")
    print(f"  functions with VEX/EVEX code: {len(found)}; allowed: {len(allowed)}; violations: {len(bad)}")
    if args.verbose:
        for name, cls, why in allowed:
            print(f"    ok  {cls:6s} {why:22s} {name}")
    for name, kind, cls, example, why in bad:
        print(f"  VIOLATION ({why}): {kind} {cls} function {name}\n      e.g. {example}")
    if not full:
        print("  warning: stripped module; check the unstripped build output for the full check")
    if args.expect_isa_code and not any(why.startswith("entry point") for _, _, why in allowed):
        print("  FAILED: no ISA entry point with VEX/EVEX code found, though this build has ISA units")
        return 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

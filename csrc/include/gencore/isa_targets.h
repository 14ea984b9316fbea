// The x86 ISAs of gencore's kernels: one line per ISA, naming the compiler
// target of its translation units (files named *_<isa>.cpp). This is the one
// list. The ISA files' target regions (gencore/isa_begin.h), CMake (which files
// are ISA files, dropped from portable builds) and tools/check_isa_symbols.py
// (which functions are entry points) all read it, so a new ISA is one line
// here, its run-time check in csrc/common/cpu_features.cpp, and its candidate
// in gencore/isa.h. Keep each string to the features cpu_features.cpp checks
// for that level: code may use all of them once the check has passed.
#pragma once

#define GENCORE_TARGET_avx2 "avx2,fma"
#define GENCORE_TARGET_avxvnni "avx2,fma,avxvnni"
#define GENCORE_TARGET_avx512 "avx2,fma,avx512f,avx512bw,avx512dq,avx512vl"
#define GENCORE_TARGET_avx512bf16 "avx2,fma,avx512f,avx512bw,avx512dq,avx512vl,avx512bf16"
#define GENCORE_TARGET_avx512vnni "avx2,fma,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni"

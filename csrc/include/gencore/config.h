// Compile-time contract of every gencore CPU translation unit: each gencore
// header includes this one, so no source can be built outside it.
#pragma once

// NaN/inf handling is part of every op's contract (the fused finiteness checks
// compute x * 0 and test it against 0, std::isfinite refuses bad rows, a NaN
// wins Mahalanobis' minimum), and all of it relies on IEEE arithmetic, which
// -ffast-math and -ffinite-math-only let the compiler assume away. The CPU
// module is built with -fno-math-errno instead: that only drops errno writes
// from libm calls (so sqrt becomes one instruction) and keeps IEEE results.
#if defined(__FAST_MATH__)
#error "gencore must not be compiled with -ffast-math: its NaN/inf checks rely on IEEE arithmetic"
#endif
#if defined(__FINITE_MATH_ONLY__) && __FINITE_MATH_ONLY__
#error "gencore must not be compiled with -ffinite-math-only: its NaN/inf checks rely on IEEE arithmetic"
#endif

// Closes the target region opened by gencore/isa_begin.h; nothing ISA-specific
// may follow in the unit.
#if !defined(GENCORE_ISA_REGION_OPEN)
#error "gencore/isa_end.h without gencore/isa_begin.h"
#endif
#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
#undef GENCORE_ISA_REGION_OPEN
#undef GENCORE_ISA

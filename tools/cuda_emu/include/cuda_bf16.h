// Stands in for CUDA's header when cuda/common.cuh is compiled by the emulator:
// the bf16 types and conversions are emulated in emu.h.
#include "../emu.h"

// Run-time choice of the CPU kernels' instruction set (csrc/cpu/dispatch.cpp).
//
// On x86-64 with GCC the CPU kernels are compiled three times -- "baseline" (x86-64), "avx2" (x86-64-v3) and
// "avx512" (x86-64-v4) -- and window_attention_cpu / local_attention_cpu run the best variant this CPU supports,
// chosen once, at the first call (the Python module makes that call when it is imported). A build with
// COGVIDEO_NATIVE=ON has the one variant "native" (-march=native); other compilers and architectures have
// "baseline" only. The environment variable COGVIDEO_CPU_ISA=<name> picks a lower variant instead (benchmarks,
// tests); a name this build or CPU cannot run is reported on stderr and ignored.
#pragma once

#include <string>
#include <vector>

namespace cogvideo {

// The variant the CPU entry points run ("avx512", "avx2", "baseline" or "native").
const char* cpu_isa();

// The variants of this build that this CPU can run, best first.
std::vector<std::string> cpu_isas();

// Runs the CPU entry points with variant `name` (one of cpu_isas()) from now on; throws InvalidArgument for any
// other name. Not synchronised with kernels running at the time: for tests and benchmarks.
void set_cpu_isa(const std::string& name);

}  // namespace cogvideo

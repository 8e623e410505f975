// The instruction-set variant a CPU kernel translation unit is compiled for (include it after every other
// header, then wrap the kernel code in COGVIDEO_CPU_TARGET_BEGIN / COGVIDEO_CPU_TARGET_END).
//
// CMake compiles csrc/cpu/*_cpu.cpp once per variant with COGVIDEO_CPU_ISA=<name> and COGVIDEO_CPU_ISA_<NAME>
// defined, and the kernels land in namespace cogvideo::cpu_<name>; csrc/cpu/dispatch.cpp picks one variant at
// run time (cogvideo/cpu_isa.h). Every variant is compiled with the same flags; the instruction set of a
// variant comes from a `#pragma GCC target` region that opens after the includes. So the code of the region
// (the kernels, with what they inline) uses the variant's instructions, while the inline and template functions
// of the headers -- std::vector, std::string, rules.h, shared by every variant and merged by the linker -- are
// compiled for the baseline in each of them: whichever copy the linker keeps runs on any x86-64 CPU. (With
// -mavx512f on the command line instead, a merged copy compiled for AVX-512 could be the one the baseline
// variant calls.)
//
//   baseline  the compiler's default target (x86-64: SSE2), no region
//   avx2      x86-64-v3: AVX2, FMA, F16C, BMI1/2, LZCNT, MOVBE (Haswell, Zen 1 and later)
//   avx512    x86-64-v4: the above + AVX-512 F/BW/CD/DQ/VL, 512-bit vectors preferred (Skylake-SP, Zen 4 and later)
//   native    the whole build with -march=native (COGVIDEO_NATIVE=ON): no region, no dispatch
//
// The C++ front end reads the whole file before it parses the pragma, so the ISA macros (__F16C__, __AVX2__)
// do not follow the region: code tests the variant's own macros instead --
//   COGVIDEO_CPU_HAS_F16C       the F16C fp16 conversions are available
//   COGVIDEO_CPU_VECTOR_BYTES   the widest vector register (16 SSE, 32 AVX2, 64 AVX-512): kernels written with
//                               GCC vector types use it as their width (a wider type is split into several
//                               registers and spills: 16-lane vectors ran the local-attention kernel 4-6x
//                               slower under AVX2 and SSE2 than vectors of the register's width)
//   COGVIDEO_CPU_VECTOR_REGS    how many of them (16, or 32 with AVX-512)
#pragma once

#if !defined(COGVIDEO_CPU_ISA)
#error "csrc/cpu kernels are compiled once per ISA variant: COGVIDEO_CPU_ISA must be defined (see CMakeLists.txt)"
#endif

#define COGVIDEO_CPU_CAT2(a, b) a##b
#define COGVIDEO_CPU_CAT(a, b) COGVIDEO_CPU_CAT2(a, b)
#define COGVIDEO_CPU_NS COGVIDEO_CPU_CAT(cpu_, COGVIDEO_CPU_ISA)  // cpu_baseline, cpu_avx2, ...

#if defined(COGVIDEO_CPU_ISA_AVX2) || defined(COGVIDEO_CPU_ISA_AVX512)
#if !defined(__GNUC__) || defined(__clang__)
#error "the avx2 / avx512 CPU variants need GCC's #pragma GCC target (CMake builds only the baseline elsewhere)"
#endif
#if !defined(__x86_64__)
#error "the avx2 / avx512 CPU variants are x86-64 only"
#endif
#define COGVIDEO_CPU_HAS_F16C 1
#define COGVIDEO_CPU_PRAGMA(x) _Pragma(#x)
#define COGVIDEO_CPU_TARGET_END COGVIDEO_CPU_PRAGMA(GCC pop_options)
#endif

#if defined(COGVIDEO_CPU_ISA_AVX2)
#define COGVIDEO_CPU_VECTOR_BYTES 32
#define COGVIDEO_CPU_VECTOR_REGS 16
#define COGVIDEO_CPU_TARGET_BEGIN                                                                   \
  COGVIDEO_CPU_PRAGMA(GCC push_options)                                                             \
  COGVIDEO_CPU_PRAGMA(GCC target("popcnt,sse3,ssse3,sse4.1,sse4.2,avx,avx2,bmi,bmi2,f16c,fma,lzcnt,movbe"))
#elif defined(COGVIDEO_CPU_ISA_AVX512)
#define COGVIDEO_CPU_VECTOR_BYTES 64
#define COGVIDEO_CPU_VECTOR_REGS 32
#define COGVIDEO_CPU_TARGET_BEGIN                                                                   \
  COGVIDEO_CPU_PRAGMA(GCC push_options)                                                             \
  COGVIDEO_CPU_PRAGMA(GCC target("popcnt,sse3,ssse3,sse4.1,sse4.2,avx,avx2,bmi,bmi2,f16c,fma,lzcnt,movbe,avx512f,avx512bw,avx512cd,avx512dq,avx512vl,prefer-vector-width=512"))
#elif defined(COGVIDEO_CPU_ISA_BASELINE) || defined(COGVIDEO_CPU_ISA_NATIVE)
#define COGVIDEO_CPU_TARGET_BEGIN
#define COGVIDEO_CPU_TARGET_END
#if defined(__F16C__)  // native on an F16C machine (the command line's -march=native)
#define COGVIDEO_CPU_HAS_F16C 1
#else
#define COGVIDEO_CPU_HAS_F16C 0
#endif
#if defined(__AVX512F__)  // native: what -march=native enabled; baseline: the compiler's default target
#define COGVIDEO_CPU_VECTOR_BYTES 64
#define COGVIDEO_CPU_VECTOR_REGS 32
#elif defined(__AVX__)
#define COGVIDEO_CPU_VECTOR_BYTES 32
#define COGVIDEO_CPU_VECTOR_REGS 16
#else
#define COGVIDEO_CPU_VECTOR_BYTES 16
#define COGVIDEO_CPU_VECTOR_REGS 16
#endif
#else
#error "unknown COGVIDEO_CPU_ISA (baseline, avx2, avx512 or native)"
#endif

// Compiler-specific spellings behind portable names, so that every compiler setup.py may use
// (GCC/Clang; MSVC on win32) builds the same sources: standard C++ where the standard set in
// setup.py (C++17) has it, else a builtin guarded by its compiler, else plain C++.
#pragma once

#include <cstdint>

#if defined(__has_include)
#if __has_include(<bit>)
#include <bit>  // std::popcount when compiled as C++20 (__cpp_lib_bitops)
#endif
#endif

// Forces inlining: a callee inlined into a function compiled for a CPU feature (popcnt) is
// compiled with that feature too.
#if defined(__GNUC__) || defined(__clang__)
#define FK_ALWAYS_INLINE __attribute__((always_inline)) inline
#elif defined(_MSC_VER)
#define FK_ALWAYS_INLINE __forceinline
#else
#define FK_ALWAYS_INLINE inline
#endif

// x86 with GCC/Clang: a function can be compiled for the popcnt instruction (FK_TARGET_POPCNT)
// and chosen at run time (cpu_has_popcnt()). Elsewhere the attribute is empty and
// cpu_has_popcnt() is false, so the generic code runs.
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define FK_TARGET_POPCNT __attribute__((target("popcnt")))
#define FK_POPCNT_DISPATCH 1
#else
#define FK_TARGET_POPCNT
#define FK_POPCNT_DISPATCH 0
#endif

namespace fk {

inline bool cpu_has_popcnt() {
#if FK_POPCNT_DISPATCH
  return __builtin_cpu_supports("popcnt");
#else
  return false;
#endif
}

// Number of set bits of x: one instruction where the caller targets popcnt.
FK_ALWAYS_INLINE int popcount64(uint64_t x) {
#if defined(__cpp_lib_bitops)
  return std::popcount(x);
#elif defined(__GNUC__) || defined(__clang__)
  return __builtin_popcountll(x);
#else  // SWAR: bit counts of pairs, nibbles, bytes, then the bytes' sum in the top byte
  x = x - ((x >> 1) & 0x5555555555555555ull);
  x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
  x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0Full;
  return static_cast<int>((x * 0x0101010101010101ull) >> 56);
#endif
}

}  // namespace fk

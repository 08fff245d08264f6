/// @file qwen/runtime.h
/// @brief Process-wide settings and measurements: the number of threads the kernels use, and the
/// peak memory of the process (what the examples and `qwen train` report as "peak RSS").
#pragma once
#include <cstddef>
#include <string>

namespace qwen::api {

/// Sets the number of threads every parallel kernel uses (OpenMP; the default is all cores).
/// n <= 0 leaves the setting unchanged.
void set_num_threads(int n);

/// The number of threads the kernels use now.
int num_threads();

/// Peak resident memory of this process so far, in bytes (getrusage's ru_maxrss): weights, caches,
/// activations and everything else the process touched.
size_t peak_memory_bytes();

/// The instruction set the kernels dispatch to on this CPU: "avx512", "avx2" or "scalar"
/// (the environment variable QWEN_ISA can cap it).
std::string cpu_isa();

}  // namespace qwen::api

namespace qwen {
using namespace api;  // NOLINT: every public name of qwen::api is also qwen::name
}  // namespace qwen

// speq: stochastic precision ensemble training of quantized neural networks, on the CPU.
// Include this one header to get all of speq; each line below is one floor of the library,
// and each floor includes only the floors above it in this list.
#pragma once

// core: tensors, the autodiff tape, errors, threads, random numbers
#include "speq/core/error.hpp"
#include "speq/core/rng.hpp"
#include "speq/core/tape.hpp"
#include "speq/core/tensor.hpp"
#include "speq/core/threads.hpp"

// ops: differentiable operations, forward and backward side by side
#include "speq/ops/add.hpp"
#include "speq/ops/relu.hpp"

// speq/nn/stateless.hpp: modules without parameters, so that Sequential can chain the plain ops.
#pragma once

#include "speq/nn/module.hpp"
#include "speq/ops/pool.hpp"
#include "speq/ops/relu.hpp"
#include "speq/ops/reshape.hpp"

namespace speq::nn {

// x: any shape -> same shape
class ReLU : public UnaryModule {
public:
    Var forward(const Var& x) override { return relu(x); }
};

// x: [N, C, H, W] -> the mean over H, W per (n, c) (shape as ops/pool.hpp defines it)
class GlobalAvgPool : public UnaryModule {
public:
    Var forward(const Var& x) override { return global_avg_pool(x); }
};

// x: [N, ...] -> [N, product of the rest]
class Flatten : public UnaryModule {
public:
    Var forward(const Var& x) override { return flatten(x); }
};

}  // namespace speq::nn

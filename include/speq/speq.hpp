// speq: stochastic precision ensemble training of quantized neural networks, on the CPU.
// Include this one header to get all of speq. Each group below is one floor of the library;
// a floor includes only the floors listed before it.
#pragma once

// core: tensors, the autodiff tape, errors, threads, random numbers
#include "speq/core/error.hpp"
#include "speq/core/rng.hpp"
#include "speq/core/tape.hpp"
#include "speq/core/tensor.hpp"
#include "speq/core/threads.hpp"

// kernels: the fast loops (and the plain references the tests compare them with)
#include "speq/kernels/conv_reference.hpp"
#include "speq/kernels/elementwise.hpp"
#include "speq/kernels/gemm.hpp"
#include "speq/kernels/im2col.hpp"
#include "speq/kernels/reduce.hpp"

// ops: differentiable operations, forward and backward side by side
#include "speq/ops/add.hpp"
#include "speq/ops/batch_norm.hpp"
#include "speq/ops/conv2d.hpp"
#include "speq/ops/linear.hpp"
#include "speq/ops/losses.hpp"
#include "speq/ops/pool.hpp"
#include "speq/ops/relu.hpp"
#include "speq/ops/reshape.hpp"
#include "speq/ops/scale.hpp"
#include "speq/ops/shortcut.hpp"
#include "speq/ops/softmax.hpp"

// quant: quantizers as differentiable ops (straight-through and PACT/LSQ gradients)
#include "speq/quant/act_quant.hpp"
#include "speq/quant/bits.hpp"
#include "speq/quant/golden_section.hpp"
#include "speq/quant/lsq.hpp"
#include "speq/quant/weight_quant.hpp"
#include "speq/ops/batch_norm_act.hpp"  // ops, but fuses quant's PACT: after quant

// nn: modules with named parameters and buffers (PyTorch state_dict names)
#include "speq/nn/act_quant.hpp"
#include "speq/nn/batch_norm.hpp"
#include "speq/nn/batch_norm_act.hpp"
#include "speq/nn/conv2d.hpp"
#include "speq/nn/init.hpp"
#include "speq/nn/linear.hpp"
#include "speq/nn/models/make_model.hpp"
#include "speq/nn/models/resnet.hpp"
#include "speq/nn/models/small_cnn.hpp"
#include "speq/nn/module.hpp"
#include "speq/nn/quant_control.hpp"
#include "speq/nn/sequential.hpp"
#include "speq/nn/stateless.hpp"
#include "speq/nn/weight_quantizer.hpp"

// optim: SGD and learning-rate schedules
#include "speq/optim/schedule.hpp"
#include "speq/optim/sgd.hpp"

// io: data sets and batches, checkpoints, configs
#include "speq/io/atomic_file.hpp"
#include "speq/io/augment.hpp"
#include "speq/io/cifar10.hpp"
#include "speq/io/config.hpp"
#include "speq/io/dataset.hpp"
#include "speq/io/idx.hpp"
#include "speq/io/loader.hpp"
#include "speq/io/safetensors.hpp"

// train: the training methods (fp, qat, kd, speq), checkpoints, evaluation, progress
#include "speq/train/checkpoint.hpp"
#include "speq/train/data.hpp"
#include "speq/train/evaluate.hpp"
#include "speq/train/progress.hpp"
#include "speq/train/speq.hpp"
#include "speq/train/trainer.hpp"

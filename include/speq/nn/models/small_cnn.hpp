// speq/nn/models/small_cnn.hpp: a small CNN for 28x28 images (MNIST, Fashion-MNIST), for quick
// runs and the quickstart.
//
//   conv1 3x3, in->C1, stride 1 -> bn1 -> act1      28x28
//   conv2 3x3, C1->C2, stride 2 -> bn2 -> act2      14x14
//   conv3 3x3, C2->C3, stride 2 -> bn3 -> act3       7x7
//   global average pool -> fc (C3 -> classes, with bias)
// Widths C1, C2, C3 = kSmallCnnWidths. Convs have no bias (BatchNorm follows). act1 and act2 feed a
// conv; act3 feeds the pool and fc. Init as the CIFAR ResNet (kaiming normal, fan_in; biases 0).
// Any input size works (the pool is global); 28x28 is what the sizes above assume.
#pragma once

#include <memory>

#include "speq/nn/act_quant.hpp"
#include "speq/nn/batch_norm.hpp"
#include "speq/nn/batch_norm_act.hpp"
#include "speq/nn/conv2d.hpp"
#include "speq/nn/linear.hpp"
#include "speq/nn/module.hpp"
#include "speq/ops/pool.hpp"

namespace speq::nn {

// 16, 32, 64: 24,058 weights, 1.9 M multiply-adds per 28x28 image; forward + backward of a batch of
// 128 took about 0.11 s on one core here (an epoch of 60,000 images: under a minute). Twice these
// widths (32, 64, 128) cost about 3x as much time.
inline constexpr int kSmallCnnWidths[3] = {16, 32, 64};

// forward: x [N, in_channels, H, W] -> logits [N, num_classes]
class SmallCnn : public UnaryModule {
public:
    SmallCnn(int in_channels, int num_classes, Rng& rng) : num_classes_(num_classes) {
        SPEQ_CHECK(in_channels >= 1, "nn::SmallCnn: in_channels must be >= 1, got ", in_channels);
        SPEQ_CHECK(num_classes >= 1, "nn::SmallCnn: num_classes must be >= 1, got ", num_classes);
        const auto init = WeightInit::kaiming_normal_fan_in;
        const int c1 = kSmallCnnWidths[0], c2 = kSmallCnnWidths[1], c3 = kSmallCnnWidths[2];
        conv1_ = register_module("conv1", std::make_shared<Conv2d>(in_channels, c1, 3, 1, 1, false, rng, init));
        bn1_ = register_module("bn1", std::make_shared<BatchNorm2d>(c1));
        act1_ = register_module("act1", std::make_shared<ActQuant>());
        conv2_ = register_module("conv2", std::make_shared<Conv2d>(c1, c2, 3, 2, 1, false, rng, init));
        bn2_ = register_module("bn2", std::make_shared<BatchNorm2d>(c2));
        act2_ = register_module("act2", std::make_shared<ActQuant>());
        conv3_ = register_module("conv3", std::make_shared<Conv2d>(c2, c3, 3, 2, 1, false, rng, init));
        bn3_ = register_module("bn3", std::make_shared<BatchNorm2d>(c3));
        act3_ = register_module("act3", std::make_shared<ActQuant>());
        fc_ = register_module("fc", std::make_shared<Linear>(c3, num_classes, true, rng, init));
    }

    Var forward(const Var& x) override {
        Var h = conv_bn_act(*conv1_, *bn1_, *act1_, x);  // conv -> bn -> act (nn/batch_norm_act.hpp)
        h = conv_bn_act(*conv2_, *bn2_, *act2_, h);
        h = conv_bn_act(*conv3_, *bn3_, *act3_, h);
        return fc_->forward(global_avg_pool(h));
    }

    int num_classes() const { return num_classes_; }
    Conv2d& conv1() { return *conv1_; }
    Conv2d& conv2() { return *conv2_; }
    Conv2d& conv3() { return *conv3_; }
    BatchNorm2d& bn1() { return *bn1_; }
    BatchNorm2d& bn2() { return *bn2_; }
    BatchNorm2d& bn3() { return *bn3_; }
    ActQuant& act1() { return *act1_; }
    ActQuant& act2() { return *act2_; }
    ActQuant& act3() { return *act3_; }
    Linear& fc() { return *fc_; }

private:
    int num_classes_;
    std::shared_ptr<Conv2d> conv1_, conv2_, conv3_;
    std::shared_ptr<BatchNorm2d> bn1_, bn2_, bn3_;
    std::shared_ptr<ActQuant> act1_, act2_, act3_;
    std::shared_ptr<Linear> fc_;
};

}  // namespace speq::nn

// speq/nn/models/resnet.hpp: the CIFAR ResNets of He et al. 2016 ("Deep Residual Learning for
// Image Recognition", section 4.2): ResNet-20/32/44/56/110, depth = 6n + 2.
//
//   conv1 3x3, 3->16 -> bn1 -> act
//   layer1: n BasicBlocks, 16 channels, 32x32
//   layer2: n BasicBlocks, 32 channels, 16x16 (the first block has stride 2)
//   layer3: n BasicBlocks, 64 channels,  8x8  (the first block has stride 2)
//   global average pool -> fc (64 -> classes, with bias)
// BasicBlock: conv1 3x3 -> bn1 -> act1 -> conv2 3x3 -> bn2, + shortcut(x), -> act2.
// Shortcut where the shape changes (first block of layer2 and layer3):
//   A  subsample x by 2 and pad the channels with zero planes (subsample_pad_channels: half of the
//      new planes before, half after, as F.pad(x[:, :, ::2, ::2], (0,0,0,0, planes//4, planes//4)));
//      no parameters. The paper's choice for CIFAR, and speq's default.
//   B  1x1 conv, stride 2, no bias -> BatchNorm: parameters `shortcut.0.weight`, `shortcut.1.*`.
// Elsewhere the shortcut is the identity. Every activation is an nn::ActQuant ("act", "act1",
// "act2"): ReLU at full precision, PACT when quantized; all ActQuants feed a conv except the last
// block's act2, which feeds the pool and fc.
//
// Names are those of the common PyTorch code (akamaster/pytorch_resnet_cifar10: conv1, bn1,
// layer1.0.conv1, layer1.0.bn1, ..., layer2.0.shortcut.0 / .1 for option B), except the classifier,
// which is `fc` here and `linear` there; the ActQuants add `*.alpha` entries PyTorch's ReLUs lack.
// Init as there: kaiming_normal_ (fan_in, gain sqrt 2) for conv and fc weights, BN weight 1, bias 0;
// the fc bias starts at 0 (PyTorch's default would be uniform in +-1/8).
//
// ResNet-20: 269,722 weights with option A (272,474 with B) plus 19 alphas; 40.55 M multiply-adds
// per 32x32 image (convs 40.55 M, fc 640).
#pragma once

#include <memory>
#include <string>

#include "speq/nn/act_quant.hpp"
#include "speq/nn/batch_norm.hpp"
#include "speq/nn/batch_norm_act.hpp"
#include "speq/nn/conv2d.hpp"
#include "speq/nn/linear.hpp"
#include "speq/nn/module.hpp"
#include "speq/nn/sequential.hpp"
#include "speq/ops/pool.hpp"
#include "speq/ops/shortcut.hpp"

namespace speq::nn {

enum class Shortcut { A, B };

inline const char* shortcut_name(Shortcut s) { return s == Shortcut::A ? "A" : "B"; }
// "A" | "B" (either case) -> Shortcut.
inline Shortcut parse_shortcut(const std::string& name) {
    if (name == "A" || name == "a") return Shortcut::A;
    if (name == "B" || name == "b") return Shortcut::B;
    fail("ResNet shortcut must be A (subsample + zero-pad channels) or B (1x1 conv + BN), got '", name, "'");
}

// forward: x [N, in, H, W] -> [N, out, ceil(H / stride), ceil(W / stride)]
class BasicBlock : public UnaryModule {
public:
    BasicBlock(int in_channels, int out_channels, int stride, Shortcut shortcut, Rng& rng)
        : in_channels_(in_channels), out_channels_(out_channels), stride_(stride), shortcut_kind_(shortcut) {
        SPEQ_CHECK(stride == 1 || stride == 2, "nn::BasicBlock: stride must be 1 or 2, got ", stride);
        if (changes_shape() && shortcut == Shortcut::A)
            SPEQ_CHECK(out_channels >= in_channels, "nn::BasicBlock: shortcut A cannot reduce channels (", in_channels,
                       " -> ", out_channels, ")");
        const auto init = WeightInit::kaiming_normal_fan_in;
        // Registration order = forward order (named_act_quants relies on it), PyTorch's names.
        conv1_ = register_module("conv1", std::make_shared<Conv2d>(in_channels, out_channels, 3, stride, 1, false, rng, init));
        bn1_ = register_module("bn1", std::make_shared<BatchNorm2d>(out_channels));
        act1_ = register_module("act1", std::make_shared<ActQuant>());
        conv2_ = register_module("conv2", std::make_shared<Conv2d>(out_channels, out_channels, 3, 1, 1, false, rng, init));
        bn2_ = register_module("bn2", std::make_shared<BatchNorm2d>(out_channels));
        if (changes_shape() && shortcut == Shortcut::B) {
            shortcut_ = register_module("shortcut", std::make_shared<Sequential>());
            shortcut_->emplace_back<Conv2d>(in_channels, out_channels, 1, stride, 0, false, rng, init);
            shortcut_->emplace_back<BatchNorm2d>(out_channels);
        }
        act2_ = register_module("act2", std::make_shared<ActQuant>());
    }

    Var forward(const Var& x) override {
        // conv_bn_act / bn_act: bn -> (+ shortcut) -> act in one pass (nn/batch_norm_act.hpp), same modules.
        const Var h = conv_bn_act(*conv1_, *bn1_, *act1_, x);
        if (!grad_enabled()) {  // nothing is recorded (inference, SPEQ's teacher): no tape order to keep
            const Var skip = shortcut(x);
            return conv_bn_act(*conv2_, *bn2_, *act2_, h, &skip);
        }
        const Var h2 = conv2_->forward(h);
        const Var skip = shortcut(x);  // after conv2, as before the fusion: the same order on the tape
        return bn_act(*bn2_, *act2_, h2, &skip);
    }

    // The shortcut branch alone: identity, option A or option B.
    Var shortcut(const Var& x) {
        if (!changes_shape()) return x;
        if (shortcut_) return shortcut_->forward(x);
        return subsample_pad_channels(x, out_channels_, stride_);
    }
    bool changes_shape() const { return stride_ != 1 || in_channels_ != out_channels_; }

    Conv2d& conv1() { return *conv1_; }
    BatchNorm2d& bn1() { return *bn1_; }
    ActQuant& act1() { return *act1_; }
    Conv2d& conv2() { return *conv2_; }
    BatchNorm2d& bn2() { return *bn2_; }
    ActQuant& act2() { return *act2_; }
    Sequential* shortcut_layers() { return shortcut_.get(); }  // option B where the shape changes, else null
    Shortcut shortcut_kind() const { return shortcut_kind_; }

private:
    int in_channels_, out_channels_, stride_;
    Shortcut shortcut_kind_;
    std::shared_ptr<Conv2d> conv1_, conv2_;
    std::shared_ptr<BatchNorm2d> bn1_, bn2_;
    std::shared_ptr<ActQuant> act1_, act2_;
    std::shared_ptr<Sequential> shortcut_;
};

// forward: x [N, in_channels, H, W] (CIFAR: [N, 3, 32, 32]) -> logits [N, num_classes]
class ResNetCifar : public UnaryModule {
public:
    ResNetCifar(int depth, int num_classes, Shortcut shortcut, Rng& rng, int in_channels = 3)
        : depth_(depth), num_classes_(num_classes) {
        SPEQ_CHECK(depth >= 8 && (depth - 2) % 6 == 0, "nn::ResNetCifar: depth must be 6n + 2 with n >= 1 "
                   "(20, 32, 44, 56, 110), got ", depth);
        SPEQ_CHECK(num_classes >= 1, "nn::ResNetCifar: num_classes must be >= 1, got ", num_classes);
        SPEQ_CHECK(in_channels >= 1, "nn::ResNetCifar: in_channels must be >= 1, got ", in_channels);
        const int n = (depth - 2) / 6;
        const auto init = WeightInit::kaiming_normal_fan_in;
        conv1_ = register_module("conv1", std::make_shared<Conv2d>(in_channels, 16, 3, 1, 1, false, rng, init));
        bn1_ = register_module("bn1", std::make_shared<BatchNorm2d>(16));
        act_ = register_module("act", std::make_shared<ActQuant>());
        int channels = 16;
        const int widths[3] = {16, 32, 64};
        for (int stage = 0; stage < 3; ++stage) {
            layers_[stage] = register_module("layer" + std::to_string(stage + 1), std::make_shared<Sequential>());
            for (int b = 0; b < n; ++b) {
                const int stride = (stage > 0 && b == 0) ? 2 : 1;
                layers_[stage]->emplace_back<BasicBlock>(channels, widths[stage], stride, shortcut, rng);
                channels = widths[stage];
            }
        }
        fc_ = register_module("fc", std::make_shared<Linear>(64, num_classes, true, rng, init));
    }

    Var forward(const Var& x) override {
        Var h = conv_bn_act(*conv1_, *bn1_, *act_, x);
        for (auto& layer : layers_) h = layer->forward(h);
        return fc_->forward(global_avg_pool(h));  // [N, 64] -> [N, classes]
    }

    int depth() const { return depth_; }
    int num_classes() const { return num_classes_; }
    int blocks_per_stage() const { return (depth_ - 2) / 6; }
    Conv2d& conv1() { return *conv1_; }
    BatchNorm2d& bn1() { return *bn1_; }
    ActQuant& act() { return *act_; }
    // stage 1..3, i = 0..blocks_per_stage()-1
    BasicBlock& block(int stage, int i) {
        SPEQ_CHECK(stage >= 1 && stage <= 3 && i >= 0 && i < blocks_per_stage(), "nn::ResNetCifar::block: no block ",
                   i, " in stage ", stage, " (stages 1..3, blocks 0..", blocks_per_stage() - 1, ")");
        return static_cast<BasicBlock&>((*layers_[stage - 1])[static_cast<size_t>(i)]);
    }
    Linear& fc() { return *fc_; }

private:
    int depth_, num_classes_;
    std::shared_ptr<Conv2d> conv1_;
    std::shared_ptr<BatchNorm2d> bn1_;
    std::shared_ptr<ActQuant> act_;
    std::shared_ptr<Sequential> layers_[3];
    std::shared_ptr<Linear> fc_;
};

}  // namespace speq::nn

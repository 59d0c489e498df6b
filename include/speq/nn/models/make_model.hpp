// speq/nn/models/make_model.hpp: models by name, so a trainer (and a config file) treats them alike.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "speq/nn/models/resnet.hpp"
#include "speq/nn/models/small_cnn.hpp"

namespace speq::nn {

// The names make_model knows.
inline std::vector<std::string> model_names() { return {"small_cnn", "resnet20", "resnet32", "resnet56"}; }

// "small_cnn" | "resnet20" | "resnet32" | "resnet56" -> a freshly initialized model.
// forward: x [N, in_channels, H, W] -> logits [N, num_classes]. `shortcut` matters for ResNets only.
inline std::shared_ptr<UnaryModule> make_model(const std::string& name, int num_classes, int in_channels,
                                               Shortcut shortcut, Rng& rng) {
    if (name == "small_cnn") return std::make_shared<SmallCnn>(in_channels, num_classes, rng);
    if (name == "resnet20") return std::make_shared<ResNetCifar>(20, num_classes, shortcut, rng, in_channels);
    if (name == "resnet32") return std::make_shared<ResNetCifar>(32, num_classes, shortcut, rng, in_channels);
    if (name == "resnet56") return std::make_shared<ResNetCifar>(56, num_classes, shortcut, rng, in_channels);
    std::string known;
    for (auto& n : model_names()) known += (known.empty() ? "" : ", ") + n;
    fail("make_model: unknown model '", name, "' (known: ", known, ")");
}

}  // namespace speq::nn

// speq/nn/sequential.hpp: a chain of single-input modules (PyTorch's nn.Sequential). Children are
// named "0", "1", ... by position unless given a name, so tensors are named "0.weight", ...
#pragma once

#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "speq/nn/module.hpp"

namespace speq::nn {

// forward: x -> layers[n-1](...layers[1](layers[0](x)))   (an empty Sequential returns x)
class Sequential : public UnaryModule {
public:
    // Appends a layer named by its position; returns it, typed.
    template <class M>
    std::shared_ptr<M> push_back(std::shared_ptr<M> layer) {
        return push_back(std::to_string(layers_.size()), std::move(layer));
    }
    template <class M>
    std::shared_ptr<M> push_back(const std::string& name, std::shared_ptr<M> layer) {
        static_assert(std::is_base_of_v<UnaryModule, M>, "Sequential::push_back: M must derive from nn::UnaryModule");
        register_module(name, layer);
        layers_.push_back(layer);
        return layer;
    }
    // Constructs the layer in place: seq.emplace_back<Conv2d>(3, 16, 3, 1, 1, false, rng).
    template <class M, class... Args>
    std::shared_ptr<M> emplace_back(Args&&... args) {
        return push_back(std::make_shared<M>(std::forward<Args>(args)...));
    }

    Var forward(const Var& x) override {
        Var h = x;
        for (auto& layer : layers_) h = layer->forward(h);
        return h;
    }

    size_t size() const { return layers_.size(); }
    UnaryModule& operator[](size_t i) {
        SPEQ_CHECK(i < layers_.size(), "Sequential: index ", i, " out of range for ", layers_.size(), " layers");
        return *layers_[i];
    }

private:
    std::vector<std::shared_ptr<UnaryModule>> layers_;
};

}  // namespace speq::nn

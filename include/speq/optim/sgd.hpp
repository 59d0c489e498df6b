// speq/optim/sgd.hpp: stochastic gradient descent with momentum, Nesterov and weight decay,
// exactly PyTorch's torch.optim.SGD update. For each parameter p with gradient grad:
//
//   g   = grad + wd * p                       (wd = 0 for parameters the decay filter skips)
//   buf = g                                   on the parameter's first step (momentum != 0)
//   buf = momentum * buf + (1 - dampening) * g   afterwards
//   g   = g + momentum * buf   if nesterov,   else   g = buf        (when momentum != 0)
//   p   = p - lr * g
//
// Parameters without a gradient (never reached by backward) are skipped, buffers included.
// The optimizer knows parameters only by name and Var; it does not know modules (layering: optim
// sits below nn). Which parameters decay is a predicate on the name: nn::weight_decay_filter(model)
// gives speq's rule (no decay for BatchNorm weights/biases and for PACT clip values "*.alpha").
#pragma once

#include <functional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "speq/core/tape.hpp"
#include "speq/kernels/elementwise.hpp"

namespace speq::optim {

struct SGDOptions {
    float lr = 0.1f;
    float momentum = 0.0f;
    float dampening = 0.0f;
    bool nesterov = false;
    float weight_decay = 0.0f;
};

// true: apply weight decay to the parameter of this name. An empty function decays everything.
using DecayFilter = std::function<bool(const std::string& name)>;

class SGD {
public:
    SGD(std::vector<std::pair<std::string, Var>> parameters, SGDOptions options, DecayFilter decays = {})
        : options_(options) {
        SPEQ_CHECK(options.lr >= 0.0f, "SGD: lr must be >= 0, got ", options.lr);
        SPEQ_CHECK(options.momentum >= 0.0f, "SGD: momentum must be >= 0, got ", options.momentum);
        SPEQ_CHECK(options.weight_decay >= 0.0f, "SGD: weight_decay must be >= 0, got ", options.weight_decay);
        SPEQ_CHECK(!options.nesterov || (options.momentum > 0.0f && options.dampening == 0.0f),
                   "SGD: nesterov needs momentum > 0 and dampening = 0, got momentum ", options.momentum,
                   ", dampening ", options.dampening);
        for (auto& [name, var] : parameters) {
            SPEQ_CHECK(var.defined(), "SGD: parameter '", name, "' is an empty Var");
            SPEQ_CHECK(var.requires_grad(), "SGD: parameter '", name, "' does not require grad");
            SPEQ_CHECK(index_.count(name) == 0, "SGD: parameter name '", name, "' appears twice");
            for (const Slot& s : slots_)
                SPEQ_CHECK(s.param.node() != var.node(), "SGD: parameters '", s.name, "' and '", name,
                           "' are the same tensor (it would be updated twice)");
            index_[name] = slots_.size();
            const bool decay = decays ? decays(name) : true;
            slots_.push_back({name, var, decay, Tensor()});
        }
    }

    // One update of every parameter that has a gradient.
    void step() {
        using kernels::FloatBatch;
        const float lr = options_.lr, momentum = options_.momentum;
        const bool nesterov = options_.nesterov;
        const float keep = 1.0f - options_.dampening;
        for (Slot& s : slots_) {
            if (!s.param.has_grad()) continue;
            Tensor& p = s.param.node()->value;
            const Tensor& grad = s.param.grad();
            SPEQ_CHECK(same_shape(p, grad), "SGD: parameter '", s.name, "' has shape ", to_string(p.shape()),
                       " but its gradient has shape ", to_string(grad.shape()));
            const int64_t n = p.numel();
            const float wd = s.decay ? options_.weight_decay : 0.0f;
            // g = grad + wd * p (PyTorch skips the add when wd is 0; so do we, for identical bits)
            auto decayed = [wd](FloatBatch g, FloatBatch w) { return wd != 0.0f ? g + FloatBatch(wd) * w : g; };

            if (momentum == 0.0f) {
                kernels::map(n, p.data(), [&](FloatBatch w, FloatBatch g) { return w - FloatBatch(lr) * decayed(g, w); },
                             p.data(), grad.data());
                continue;
            }
            if (s.buffer.empty()) {
                s.buffer = Tensor::uninitialized(p.shape());
                kernels::map(n, s.buffer.data(), decayed, grad.data(), p.data());
            } else {
                kernels::map(
                    n, s.buffer.data(),
                    [&](FloatBatch b, FloatBatch g, FloatBatch w) {
                        return FloatBatch(momentum) * b + FloatBatch(keep) * decayed(g, w);
                    },
                    s.buffer.data(), grad.data(), p.data());
            }
            if (nesterov) {
                kernels::map(
                    n, p.data(),
                    [&](FloatBatch w, FloatBatch g, FloatBatch b) {
                        return w - FloatBatch(lr) * (decayed(g, w) + FloatBatch(momentum) * b);
                    },
                    p.data(), grad.data(), s.buffer.data());
            } else {
                kernels::map(n, p.data(), [&](FloatBatch w, FloatBatch b) { return w - FloatBatch(lr) * b; },
                             p.data(), s.buffer.data());
            }
        }
    }

    // Zeroes every parameter's gradient.
    void zero_grad() {
        for (Slot& s : slots_) s.param.zero_grad();
    }

    float lr() const { return options_.lr; }
    // Schedules call this before each step: sgd.set_lr(schedule.lr_at(step)).
    void set_lr(float lr) {
        SPEQ_CHECK(lr >= 0.0f, "SGD::set_lr: lr must be >= 0, got ", lr);
        options_.lr = lr;
    }
    const SGDOptions& options() const { return options_; }

    // Parameter names in the order given, and whether each decays.
    std::vector<std::string> parameter_names() const {
        std::vector<std::string> out;
        for (const Slot& s : slots_) out.push_back(s.name);
        return out;
    }
    bool decays(const std::string& name) const { return slot(name, "decays").decay; }

    // ---- momentum buffers, for checkpoints ----

    // The buffers that exist (a parameter gets one on its first step with momentum != 0), by
    // parameter name, in parameter order.
    std::vector<std::pair<std::string, const Tensor*>> momentum_buffers() const {
        std::vector<std::pair<std::string, const Tensor*>> out;
        for (const Slot& s : slots_)
            if (!s.buffer.empty()) out.push_back({s.name, &s.buffer});
        return out;
    }
    // nullptr when the parameter has no buffer yet.
    const Tensor* momentum_buffer(const std::string& name) const {
        const Slot& s = slot(name, "momentum_buffer");
        return s.buffer.empty() ? nullptr : &s.buffer;
    }
    // Restores a saved buffer (shape must match the parameter's).
    void set_momentum_buffer(const std::string& name, Tensor buffer) {
        Slot& s = slots_[index_of(name, "set_momentum_buffer")];
        SPEQ_CHECK(same_shape(buffer, s.param.value()), "SGD::set_momentum_buffer: buffer for '", name,
                   "' has shape ", to_string(buffer.shape()), " but the parameter has shape ",
                   to_string(s.param.shape()));
        s.buffer = std::move(buffer);
    }
    // Forgets every buffer (the next step starts momentum afresh).
    void clear_momentum_buffers() {
        for (Slot& s : slots_) s.buffer = Tensor();
    }

private:
    struct Slot {
        std::string name;
        Var param;
        bool decay;
        Tensor buffer;  // empty until the first step with momentum
    };

    size_t index_of(const std::string& name, const char* what) const {
        auto it = index_.find(name);
        SPEQ_CHECK(it != index_.end(), "SGD::", what, ": no parameter named '", name, "'");
        return it->second;
    }
    const Slot& slot(const std::string& name, const char* what) const { return slots_[index_of(name, what)]; }

    SGDOptions options_;
    std::vector<Slot> slots_;
    std::unordered_map<std::string, size_t> index_;
};

}  // namespace speq::optim

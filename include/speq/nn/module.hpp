// speq/nn/module.hpp: the base class of every layer and model: named parameters, named buffers,
// child modules, and the train/eval flag.
//
// A module registers what it owns under short names ("weight", "running_mean", "conv1") and the
// tree gives every tensor a dotted name, the same as PyTorch's state_dict:
//
//   model                          named_parameters()         named_buffers()
//   ├── conv1 (Conv2d)             conv1.weight
//   ├── bn1 (BatchNorm2d)          bn1.weight, bn1.bias       bn1.running_mean, bn1.running_var
//   ├── layer1 (Sequential)
//   │   └── 0 (block)              layer1.0.conv1.weight ...
//   └── fc (Linear)                fc.weight, fc.bias
//
// Order is registration order: a module's own parameters, then its own buffers (in state()),
// then each child in turn, recursively (PyTorch's order too, so state files line up).
//
// Parameters are Vars that require grad (shared handles: the module, the optimizer and the tape
// all hold the same Node). Buffers are plain Tensors the module updates itself (BatchNorm's
// running statistics); they are saved in checkpoints but get no gradient.
//
// Modules live behind std::shared_ptr (children are registered as shared_ptr) or in place; they
// are neither copied nor moved, so pointers handed out by named_buffers() / state() stay valid
// for the module's lifetime.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

#include "speq/core/tape.hpp"

namespace speq::nn {

using NamedParameters = std::vector<std::pair<std::string, Var>>;
using NamedTensors = std::vector<std::pair<std::string, Tensor*>>;
using ConstNamedTensors = std::vector<std::pair<std::string, const Tensor*>>;

class Module {
public:
    Module() = default;
    virtual ~Module() = default;
    Module(const Module&) = delete;
    Module& operator=(const Module&) = delete;
    Module(Module&&) = delete;
    Module& operator=(Module&&) = delete;

    // ---- registration (names: non-empty, no '.', unique within this module) ----

    // Makes `value` a trainable parameter and returns its handle. `weight_decay = false` marks
    // parameters that the optimizer should not decay (BatchNorm's weight and bias); see
    // weight_decay_filter() below.
    Var register_parameter(const std::string& name, Tensor value, bool weight_decay = true) {
        check_new_name("register_parameter", name);
        Var v = Var::parameter(std::move(value));
        parameters_.push_back({name, v, weight_decay});
        return v;
    }

    // Makes `value` a buffer (saved in state(), no gradient) and returns a reference to it,
    // valid for the module's lifetime.
    Tensor& register_buffer(const std::string& name, Tensor value) {
        check_new_name("register_buffer", name);
        buffers_.push_back({name, std::make_unique<Tensor>(std::move(value))});
        return *buffers_.back().second;
    }

    // Adds a child; its tensors appear under "name.". Returns the child, typed.
    template <class M>
    std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
        static_assert(std::is_base_of_v<Module, M>, "register_module: M must derive from nn::Module");
        check_new_name("register_module", name);
        SPEQ_CHECK(module != nullptr, "Module::register_module: child '", name, "' is null");
        SPEQ_CHECK(module.get() != this, "Module::register_module: a module cannot be its own child ('", name, "')");
        children_.push_back({name, module});
        return module;
    }

    // ---- the tree, with dotted names ----

    NamedParameters named_parameters() const {
        NamedParameters out;
        visit("", [&](const std::string& prefix, const Module& m) {
            for (const auto& p : m.parameters_) out.push_back({prefix + p.name, p.var});
        });
        return out;
    }
    std::vector<Var> parameters() const {
        std::vector<Var> out;
        for (auto& [name, var] : named_parameters()) out.push_back(var);
        return out;
    }
    int64_t num_parameters() const {
        int64_t n = 0;
        for (auto& [name, var] : named_parameters()) n += var.numel();
        return n;
    }

    NamedTensors named_buffers() { return collect<Tensor>(*this, false); }
    ConstNamedTensors named_buffers() const { return collect<const Tensor>(*this, false); }

    // Every tensor a checkpoint must hold: per module its parameters' values, then its buffers,
    // then its children (PyTorch's state_dict order). Writing through the pointers loads a state.
    NamedTensors state() { return collect<Tensor>(*this, true); }
    ConstNamedTensors state() const { return collect<const Tensor>(*this, true); }

    // Every module of the tree, this one first (named ""), then children depth-first:
    // "layer1", "layer1.0", "layer1.0.conv1", ... The names per-layer settings refer to.
    std::vector<std::pair<std::string, Module*>> named_modules() {
        std::vector<std::pair<std::string, Module*>> out;
        visit_modules("", [&](const std::string& name, Module& m) { out.push_back({name, &m}); });
        return out;
    }
    const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return children_; }

    // Calls fn on this module and every descendant, parents before children.
    void apply(const std::function<void(Module&)>& fn) {
        visit_modules("", [&](const std::string&, Module& m) { fn(m); });
    }

    // ---- modes ----

    // Sets training mode on the whole tree (BatchNorm uses batch statistics in training mode,
    // running statistics in eval mode).
    void train(bool on = true) {
        apply([on](Module& m) { m.training_ = on; });
    }
    void eval() { train(false); }
    bool is_training() const { return training_; }

    // Zeroes every parameter's gradient (keeps the memory; gradients accumulate until then).
    void zero_grad() {
        for (auto& [name, var] : named_parameters()) var.zero_grad();
    }

    // Full names of the parameters registered with weight_decay = false.
    std::vector<std::string> parameters_without_decay() const {
        std::vector<std::string> out;
        visit("", [&](const std::string& prefix, const Module& m) {
            for (const auto& p : m.parameters_)
                if (!p.weight_decay) out.push_back(prefix + p.name);
        });
        return out;
    }

private:
    struct Parameter {
        std::string name;
        Var var;
        bool weight_decay;
    };

    void check_new_name(const char* what, const std::string& name) const {
        SPEQ_CHECK(!name.empty(), "Module::", what, ": the name is empty");
        SPEQ_CHECK(name.find('.') == std::string::npos, "Module::", what, ": name '", name,
                   "' contains '.' (dots separate module names in the tree)");
        auto taken = [&](const char* kind) {
            fail("Module::", what, ": name '", name, "' is already registered in this module as a ", kind);
        };
        for (const auto& p : parameters_)
            if (p.name == name) taken("parameter");
        for (const auto& b : buffers_)
            if (b.first == name) taken("buffer");
        for (const auto& c : children_)
            if (c.first == name) taken("child module");
    }

    // Pre-order walk over the tree with each module's dotted prefix ("", "layer1.0.", ...).
    template <class Fn>
    void visit(const std::string& prefix, Fn&& fn) const {
        fn(prefix, *this);
        for (const auto& [name, child] : children_) child->visit(prefix + name + ".", fn);
    }
    template <class Fn>
    void visit_modules(const std::string& name, Fn&& fn) {
        fn(name, *this);
        for (auto& [child_name, child] : children_)
            child->visit_modules(name.empty() ? child_name : name + "." + child_name, fn);
    }

    // Buffers (and, with parameters = true, parameter values first) of the whole tree.
    template <class T, class Self>
    static std::vector<std::pair<std::string, T*>> collect(Self& self, bool with_parameters) {
        std::vector<std::pair<std::string, T*>> out;
        self.visit("", [&](const std::string& prefix, const Module& m) {
            if (with_parameters)
                for (const auto& p : m.parameters_) out.push_back({prefix + p.name, &p.var.node()->value});
            for (const auto& [name, tensor] : m.buffers_) out.push_back({prefix + name, tensor.get()});
        });
        return out;
    }

    std::vector<Parameter> parameters_;
    std::vector<std::pair<std::string, std::unique_ptr<Tensor>>> buffers_;
    std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
    bool training_ = true;
};

// Puts a model in training (true) or eval (false) mode for a scope and restores the mode it had,
// also when the scope is left by an exception:   { nn::ModeGuard eval_mode(model, false); ... }
class ModeGuard {
public:
    ModeGuard(Module& model, bool training) : model_(model), was_training_(model.is_training()) {
        model.train(training);
    }
    ~ModeGuard() { model_.train(was_training_); }
    ModeGuard(const ModeGuard&) = delete;
    ModeGuard& operator=(const ModeGuard&) = delete;

private:
    Module& model_;
    bool was_training_;
};

// A module with one input and one output: what Sequential chains.
class UnaryModule : public Module {
public:
    virtual Var forward(const Var& x) = 0;
    Var operator()(const Var& x) { return forward(x); }
};

// The weight-decay rule of speq, as a predicate for optim::SGD (true = decay this parameter):
// every parameter decays except
//   - those a module registered with weight_decay = false (BatchNorm2d's weight and bias), and
//   - unless decay_alpha, any parameter whose own name is "alpha" (PACT clip values: PACT
//     decays them to pull the clip in; from a calibrated alpha that only shrinks the range).
// Conv and Linear biases do decay, as in PyTorch's default SGD setup.
inline std::function<bool(const std::string&)> weight_decay_filter(const Module& model, bool decay_alpha = false) {
    auto skip = std::make_shared<std::unordered_set<std::string>>();
    for (auto& name : model.parameters_without_decay()) skip->insert(name);
    for (auto& [name, var] : model.named_parameters())
        if (!decay_alpha && (name == "alpha" || (name.size() > 6 && name.compare(name.size() - 6, 6, ".alpha") == 0)))
            skip->insert(name);
    return [skip](const std::string& name) { return skip->count(name) == 0; };
}

}  // namespace speq::nn

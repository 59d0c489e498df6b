// speq/core/tape.hpp: reverse-mode automatic differentiation at tensor granularity.
//
// A Var is a tensor that may take part in differentiation: a shared handle to a Node holding
// the value and, once backward has reached it, its gradient. Every op (speq/ops/) computes its
// output, then records ONE entry on the tape: a closure that, given the output's gradient, adds
// the inputs' gradients. The tape is therefore a list of ops in the order they ran, which is a
// topological order; backward() walks it in reverse (a Wengert list).
//
//   x ──op1──▶ h ──op2──▶ loss          forward: tape = [op1.backward, op2.backward]
//   x.grad ◀── op1 ◀── h.grad ◀── op2    backward: run op2.backward, then op1.backward
//
// Rules that the ops follow:
//   - Gradients ACCUMULATE (+=). A Var used twice (a ResNet shortcut) receives both contributions.
//   - The tape owns its closures; closures own (share) the Nodes they need. After backward the
//     tape is cleared, so every intermediate value and gradient is freed. Parameters survive
//     because the modules hold them; their .grad stays until zero_grad().
//   - Inside a NoGradGuard scope nothing is recorded and no output requires grad (SPEQ's teacher).
//
// The tape is per thread, like PyTorch's grad mode: two threads can train two models.
#pragma once

#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "speq/core/tensor.hpp"

namespace speq {

// What an op may know about the values it produced: that they lie on a uniform integer grid,
//   value[i] = (code[i] + offset) * scales[row(i)],   code an integer in [min_code, max_code],
// with one scale (per tensor) or one per index of dim 0 (row(i) = i / (numel / scales.size())).
// The quantizers set it on their outputs; an op that can compute on the integer codes instead
// (conv2d's integer path, kernels/conv_int8.hpp) reads it. A hint, never trusted: the reader checks
// that every value really is on the grid and computes in float where one is not.
struct ValueGrid {
    std::vector<float> scales;
    float offset = 0.0f;
    int32_t min_code = 0, max_code = 0;
};

struct Node {
    Tensor value;
    Tensor grad;  // empty until a gradient arrives; then the shape of value
    bool requires_grad = false;
    std::shared_ptr<const ValueGrid> grid;  // set by the op that made value, if it is quantized
};

class Var {
public:
    Var() = default;  // "no tensor", e.g. a conv without bias
    explicit Var(Tensor value, bool requires_grad = false)
        : node_(std::make_shared<Node>(Node{std::move(value), Tensor(), requires_grad, nullptr})) {}

    // A leaf that training updates: gradients are kept for it.
    static Var parameter(Tensor value) { return Var(std::move(value), true); }

    bool defined() const { return node_ != nullptr; }
    const Tensor& value() const { return node_->value; }
    Tensor& value() { return node_->value; }
    const Shape& shape() const { return node_->value.shape(); }
    int64_t numel() const { return node_->value.numel(); }
    bool requires_grad() const { return node_ && node_->requires_grad; }

    bool has_grad() const { return node_ && !node_->grad.empty(); }
    const Tensor& grad() const { return node_->grad; }
    // The gradient, created as zeros on first use: what backward closures accumulate into.
    // A Var is a handle: const on the handle does not freeze the node (closures hold const copies).
    Tensor& grad_for_accumulate() const {
        if (node_->grad.empty()) node_->grad = Tensor::zeros(node_->value.shape());
        return node_->grad;
    }
    // For a backward step that computes the whole gradient of this Var in one pass: when there is
    // none yet, it is created *uninitialized* and `fresh` is set, and the step must write every
    // element (out = g); otherwise the existing gradient is returned, `fresh` is cleared, and the
    // step adds to it (out += g). This saves the zero-fill and the read of zeros that
    // grad_for_accumulate costs on the first (in a ResNet, usually the only) contribution.
    Tensor& grad_for_write(bool& fresh) const {
        fresh = node_->grad.empty();
        if (fresh) node_->grad = Tensor::uninitialized(node_->value.shape());
        return node_->grad;
    }
    void zero_grad() const {
        if (has_grad()) node_->grad.fill(0.0f);
    }
    void drop_grad() { node_->grad = Tensor(); }

    // The grid the values lie on, if the op that made them says so (see ValueGrid); else null.
    const ValueGrid* grid() const { return node_ ? node_->grid.get() : nullptr; }
    void set_grid(ValueGrid grid) { node_->grid = std::make_shared<const ValueGrid>(std::move(grid)); }

    // For tests: lets a test watch a node's lifetime through a weak_ptr.
    const std::shared_ptr<Node>& node() const { return node_; }

private:
    std::shared_ptr<Node> node_;
};

class Tape {
public:
    void record(std::function<void()> backward_step) { steps_.push_back(std::move(backward_step)); }
    size_t size() const { return steps_.size(); }
    // Drops every recorded step (and with them every intermediate Node they hold).
    void clear() { std::vector<std::function<void()>>().swap(steps_); }

    // Runs the recorded steps newest first, then clears the tape.
    void run_backward() {
        // Move the steps out first: if a step throws, the tape is still left empty.
        std::vector<std::function<void()>> steps;
        steps.swap(steps_);
        for (size_t i = steps.size(); i-- > 0;) {
            steps[i]();
            steps[i] = nullptr;  // free this op's saved tensors as soon as it is done
        }
    }

private:
    std::vector<std::function<void()>> steps_;
};

namespace detail {
inline Tape& thread_tape() {
    thread_local Tape tape;
    return tape;
}
inline bool& thread_grad_enabled() {
    thread_local bool enabled = true;
    return enabled;
}
}  // namespace detail

inline Tape& tape() { return detail::thread_tape(); }
inline bool grad_enabled() { return detail::thread_grad_enabled(); }

// While alive, `flag` (a thread-local switch) holds `value`; then its previous value again. The
// scoped switches below and elsewhere (nn::UnfusedBnActGuard, FloatConvGuard) are this.
class ScopedFlag {
public:
    ScopedFlag(bool& flag, bool value) : flag_(flag), previous_(flag) { flag_ = value; }
    ~ScopedFlag() { flag_ = previous_; }
    ScopedFlag(const ScopedFlag&) = delete;
    ScopedFlag& operator=(const ScopedFlag&) = delete;

private:
    bool& flag_;
    bool previous_;
};

// While alive, ops record nothing and produce Vars that do not require grad.
struct NoGradGuard : ScopedFlag {
    NoGradGuard() : ScopedFlag(detail::thread_grad_enabled(), false) {}
};

// True when an op with these inputs must record a backward step.
inline bool needs_grad(std::initializer_list<const Var*> inputs) {
    if (!grad_enabled()) return false;
    for (const Var* v : inputs)
        if (v->requires_grad()) return true;
    return false;
}

// The output of an op: requires grad exactly when the op will record a backward step.
inline Var op_result(Tensor value, std::initializer_list<const Var*> inputs) {
    return Var(std::move(value), needs_grad(inputs));
}

// Backpropagates from `output`, whose gradient is set to `seed` (same shape), through every
// step recorded on this thread's tape, then clears the tape.
inline void backward(Var& output, Tensor seed) {
    SPEQ_CHECK(output.defined(), "backward: the output Var is empty");
    SPEQ_CHECK(output.requires_grad(),
               "backward: the output does not require grad (was it computed under NoGradGuard, "
               "or from inputs none of which require grad?)");
    if (seed.shape() != output.shape()) shape_mismatch("backward", "seed vs output", seed.shape(), output.shape());
    Tensor& g = output.grad_for_accumulate();
    g.vec() += seed.vec();
    tape().run_backward();
}

// Backpropagates from a scalar loss (any shape with one element): d loss / d loss = 1.
inline void backward(Var& loss) {
    SPEQ_CHECK(loss.defined() && loss.numel() == 1, "backward: the loss must have exactly one element, got shape ",
               loss.defined() ? to_string(loss.shape()) : std::string("(empty)"));
    backward(loss, Tensor::full(loss.shape(), 1.0f));
}

}  // namespace speq

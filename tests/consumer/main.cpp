// Uses the installed speq: one op forward and backward. Exit code 0 means it worked.
#include <speq/speq.hpp>

#include <cstdio>

int main() {
    speq::Var x = speq::Var::parameter(speq::Tensor::of({2}, {-1.0f, 2.0f}));
    speq::Var y = speq::relu(x);
    speq::backward(y, speq::Tensor::of({2}, {1.0f, 1.0f}));
    bool ok = x.grad()[0] == 0.0f && x.grad()[1] == 1.0f;
    std::printf("consumer: %s\n", ok ? "ok" : "wrong gradient");
    return ok ? 0 : 1;
}

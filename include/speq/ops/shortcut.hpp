// speq/ops/shortcut.hpp: the parameter-free "option A" shortcut of the CIFAR ResNets (He et al.
// 2016): keep every stride-th pixel, then pad the channels with zero planes.
#pragma once

#include <algorithm>
#include <cstdint>

#include "speq/core/tape.hpp"
#include "speq/core/threads.hpp"

namespace speq {

// x: [N, C, H, W] -> [N, out_channels, ceil(H/s), ceil(W/s)]   (out_channels >= C, s = stride >= 1)
//
//   y[n, p + c, i, j] = x[n, c, s*i, s*j],   p = (out_channels - C) / 2 zero planes before,
//   the other (out_channels - C - p) zero planes after.
// This is PyTorch's F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, p, p)) when out_channels - C = 2p, the
// form the common CIFAR ResNet code uses (planes // 4 zero planes on each side), so a checkpoint
// trained here computes the same function there.
//
// Backward: each kept pixel is copied once, the rest of x is dropped, so
//   dx[n, c, s*i, s*j] += dy[n, p + c, i, j]     (other elements of dx: + 0)
inline Var subsample_pad_channels(const Var& x, int64_t out_channels, int stride) {
    SPEQ_CHECK(x.defined() && x.value().rank() == 4, "subsample_pad_channels: x must be [N, C, H, W], got ",
               x.defined() ? to_string(x.shape()) : std::string("(empty)"));
    const int64_t N = x.shape()[0], C = x.shape()[1], H = x.shape()[2], W = x.shape()[3];
    SPEQ_CHECK(stride >= 1, "subsample_pad_channels: stride must be >= 1, got ", stride);
    SPEQ_CHECK(out_channels >= C, "subsample_pad_channels: out_channels (", out_channels,
               ") must be >= the input's channels (", C, "), x ", to_string(x.shape()));
    const int64_t Ho = (H + stride - 1) / stride, Wo = (W + stride - 1) / stride;
    const int64_t pad_before = (out_channels - C) / 2;
    Tensor y = Tensor::uninitialized({N, out_channels, Ho, Wo});
    const float* xd = x.value().data();
    float* yd = y.data();
    parallel_for(0, N * out_channels, [&](int64_t plane) {  // one output plane per piece
        const int64_t n = plane / out_channels, c = plane % out_channels - pad_before;
        float* out = yd + plane * Ho * Wo;
        if (c < 0 || c >= C) {  // a zero plane
            std::fill(out, out + Ho * Wo, 0.0f);
            return;
        }
        const float* in = xd + (n * C + c) * H * W;
        for (int64_t i = 0; i < Ho; ++i)
            for (int64_t j = 0; j < Wo; ++j) out[i * Wo + j] = in[(i * stride) * W + j * stride];
    });
    Var out = op_result(std::move(y), {&x});
    if (out.requires_grad()) {
        tape().record([x, out, stride, pad_before] {
            if (!out.has_grad() || !x.requires_grad()) return;
            const int64_t N = x.shape()[0], C = x.shape()[1], H = x.shape()[2], W = x.shape()[3];
            const int64_t K = out.shape()[1], Ho = out.shape()[2], Wo = out.shape()[3];
            float* dx = x.grad_for_accumulate().data();
            const float* dy = out.grad().data();
            parallel_for(0, N * C, [&](int64_t plane) {  // one input plane per piece
                const int64_t n = plane / C, c = plane % C;
                float* d_in = dx + plane * H * W;
                const float* d_out = dy + (n * K + pad_before + c) * Ho * Wo;
                for (int64_t i = 0; i < Ho; ++i)
                    for (int64_t j = 0; j < Wo; ++j) d_in[(i * stride) * W + j * stride] += d_out[i * Wo + j];
            });
        });
    }
    return out;
}

}  // namespace speq

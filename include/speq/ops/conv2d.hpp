// speq/ops/conv2d.hpp: 2-D convolution (cross-correlation, as in PyTorch). Forward: in integers
// where both operands are quantized (kernels/conv_int8.hpp), else direct where the output has a
// multiple of the SIMD width of pixels (kernels/conv_direct.hpp), else by im2col + GEMM.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "speq/core/tape.hpp"
#include "speq/core/threads.hpp"
#include "speq/kernels/conv_direct.hpp"
#include "speq/kernels/conv_int8.hpp"
#include "speq/kernels/conv_weight_grad.hpp"
#include "speq/kernels/elementwise.hpp"
#include "speq/kernels/gemm.hpp"
#include "speq/kernels/im2col.hpp"

namespace speq {

struct Conv2dOptions {
    int stride = 1;
    int padding = 0;  // zeros on every side
};

namespace detail {

// Images are processed in this many fixed groups (a function of N only, never of the thread
// count): each group reuses one column buffer, and the weight and bias gradients keep one
// partial sum per group, added in group order afterwards. 8 groups keep 2..8 cores busy.
inline int64_t conv2d_image_groups(int64_t n) { return std::clamp<int64_t>(n, 1, 8); }

// Checks the arguments of conv2d and returns the per-image geometry.
inline kernels::ConvGeometry conv2d_geometry(const Var& x, const Var& weight, const Var& bias,
                                             const Conv2dOptions& options) {
    SPEQ_CHECK(x.defined(), "conv2d: x is undefined");
    SPEQ_CHECK(weight.defined(), "conv2d: weight is undefined");
    const Shape& xs = x.shape();
    const Shape& ws = weight.shape();
    SPEQ_CHECK(xs.size() == 4, "conv2d: x must have rank 4 [N, C, H, W], got shape ", to_string(xs));
    SPEQ_CHECK(ws.size() == 4, "conv2d: weight must have rank 4 [K, C, kh, kw], got shape ",
               to_string(ws));
    if (xs[1] != ws[1])
        shape_mismatch("conv2d", "x [N, C, H, W] vs weight [K, C, kh, kw] (C differs)", xs, ws);
    SPEQ_CHECK(options.stride >= 1, "conv2d: stride must be >= 1, got ", options.stride);
    SPEQ_CHECK(options.padding >= 0, "conv2d: padding must be >= 0, got ", options.padding);
    SPEQ_CHECK(ws[2] >= 1 && ws[3] >= 1, "conv2d: weight kernel size must be at least 1x1, got weight shape ",
               to_string(ws));
    const int64_t padded_h = xs[2] + 2 * options.padding, padded_w = xs[3] + 2 * options.padding;
    SPEQ_CHECK(ws[2] <= padded_h && ws[3] <= padded_w, "conv2d: kernel ", ws[2], "x", ws[3],
               " is larger than the padded input ", padded_h, "x", padded_w, " (x ", to_string(xs),
               ", weight ", to_string(ws), ", padding ", options.padding, ")");
    if (bias.defined() && bias.shape() != Shape{ws[0]})
        shape_mismatch("conv2d", "bias vs [K] of weight [K, C, kh, kw]", bias.shape(), Shape{ws[0]});
    return kernels::ConvGeometry::make(xs[1], xs[2], xs[3], ws[2], ws[3], options.stride,
                                       options.padding);
}

// y [N, K, H'*W'] = conv(x) (+ bias) through the direct kernel (kernels::direct_conv_applies(g)),
// image by image over the fixed groups; after_tile(n, p0, pixels) runs on each finished pixel tile
// of image n (ops/conv2d_bn_act.hpp applies batch norm and the activation there).
template <class TileEpilogue>
void conv2d_direct(const kernels::ConvGeometry& g, const Tensor& x, const Tensor& weight, const float* bias, float* y,
                   const TileEpilogue& after_tile) {
    const int64_t N = x.dim(0), K = weight.dim(0), P = g.out_h * g.out_w;
    const Tensor packed = kernels::pack_weights_for_direct(weight, false);
    parallel_split(N, conv2d_image_groups(N), [&](int64_t, int64_t first, int64_t last) {
        Tensor copies = Tensor::uninitialized({kernels::tap_copies_size(g)});
        for (int64_t n = first; n < last; ++n) {
            kernels::make_tap_copies(g, x.data() + n * g.image_size(), copies.data());
            kernels::direct_conv_image(g, copies.data(), packed.data(), K, bias, y + n * K * P, false,
                                       [&](int64_t p0, int64_t pixels) { after_tile(n, p0, pixels); });
        }
    });
}

// Images convolved by the integer path so far (all threads): lets tests and the benchmark see
// that quantized convs take it.
inline std::atomic<int64_t>& integer_conv_images() {
    static std::atomic<int64_t> count{0};
    return count;
}
inline bool& integer_conv_enabled() {
    thread_local bool enabled = true;
    return enabled;
}

// y [N, K, H'*W'] = conv(x) (+ bias) from the operands' integer codes (kernels/conv_int8.hpp), if
// this build has the integer kernel and both Vars carry a grid it takes: x on one unsigned grid of
// codes 0..255 (PACT's), the weight on per-tensor or per-channel steps with codes in -128..127.
// Every value is checked against its grid while packing; if any is off (a stale or wrong
// annotation), nothing is written and false is returned, and the caller computes in float.
// image_done(n) runs after image n is written.
template <class ImageDone>
bool conv2d_integer(const kernels::ConvGeometry& g, const Var& x, const Var& weight, const float* bias, float* y,
                    const ImageDone& image_done) {
    if (!kernels::kInt8ConvCompiled || !integer_conv_enabled()) return false;
    const ValueGrid* x_grid = x.grid();
    const ValueGrid* w_grid = weight.grid();
    if (!x_grid || !w_grid || x_grid->scales.size() != 1 || x_grid->offset != 0.0f || x_grid->min_code < 0 ||
        x_grid->max_code > 255)
        return false;
    const kernels::Int8ConvLayout layout = kernels::Int8ConvLayout::of(g);
    const int64_t N = x.shape()[0], K = weight.shape()[0], P = g.out_h * g.out_w, words = layout.image_words();
    std::vector<int32_t> packed_w;
    std::vector<float> channel_steps;
    if (!kernels::pack_weight_codes(layout, weight.value().data(), K, kernels::integer_steps(*w_grid), packed_w,
                                    channel_steps))
        return false;
    const float x_step = x_grid->scales[0];
    Tensor packed_x = Tensor::uninitialized({N * words});  // uint32 codes in float storage
    auto* codes = reinterpret_cast<uint32_t*>(packed_x.data());
    std::vector<char> on_grid(static_cast<size_t>(N));
    parallel_split(N, conv2d_image_groups(N), [&](int64_t, int64_t first, int64_t last) {
        for (int64_t n = first; n < last; ++n)
            on_grid[static_cast<size_t>(n)] =
                kernels::pack_activation_codes(layout, x.value().data() + n * g.image_size(), x_step, codes + n * words);
    });
    if (std::find(on_grid.begin(), on_grid.end(), 0) != on_grid.end()) return false;
    parallel_split(N, conv2d_image_groups(N), [&](int64_t, int64_t first, int64_t last) {
        Tensor wide = Tensor::uninitialized({K * layout.wide});  // int32 sums in float storage
        auto* sums = reinterpret_cast<int32_t*>(wide.data());
        for (int64_t n = first; n < last; ++n) {
            kernels::int8_conv_image(layout, codes + n * words, packed_w.data(), K, sums);
            kernels::finish_int8_image(layout, sums, K, x_step, channel_steps, bias, y + n * K * P);
            image_done(n);
        }
    });
    integer_conv_images() += N;
    return true;
}

}  // namespace detail

// While alive, conv2d on this thread computes in float even where both operands are quantized:
// to measure what the integer path buys (speq_bench --float-convs), or to compare its numerics.
struct FloatConvGuard : ScopedFlag {
    FloatConvGuard() : ScopedFlag(detail::integer_conv_enabled(), false) {}
};

// x: [N, C, H, W], weight: [K, C, kh, kw], bias: [K] or undefined Var -> [N, K, H', W'],
// H' = (H + 2*padding - kh) / stride + 1, W' likewise. Zero padding; no groups or dilation.
//
// Per image n, with col_n = im2col(x_n): [C*kh*kw, H'W'] and W viewed as [K, C*kh*kw]:
//   y_n = W col_n + b                                   ([K, H'W'])
// (Where kernels::direct_conv_applies, the same sum is computed without col: kernels/conv_direct.hpp;
// where x and the weight are quantized, in integers and rounded once: detail::conv2d_integer.)
//
// Backward, with dy_n = dL/dy_n ([K, H'W']):
//   dx_n += col2im(W^T dy_n)       (col2im is the adjoint of im2col)
//           For stride 1 with "same" padding (kh = 2*padding + 1, kw likewise: ResNet's 3x3 convs)
//           this equals a forward convolution of dy_n with the flipped, transposed kernel
//           Wf[c, k, i, j] = W[k, c, kh-1-i, kw-1-j]:  dx_n += Wf im2col(dy_n), which replaces the
//           slow scatter-add of col2im by a copy and gives the GEMM depth K*kh*kw instead of K;
//           the direct kernel computes this convolution too, without im2col(dy_n).
//   dW   += sum_n dy_n col_n^T     (per fixed image group, then the groups in order)
//           For 3x3, padding 1, stride 1 or 2 (with enough channels), without col:
//           kernels/conv_weight_grad.hpp sums it into dW^T [C*kh*kw, K] per group, from x_n itself
//           and dy_n transposed (stride 1) or from x_n's stride-1 tap copies (stride 2).
//   db   += sum_{n, h', w'} dy[n, :, h', w']
// The columns are recomputed in backward rather than saved: they are kh*kw times larger than x.
inline Var conv2d(const Var& x, const Var& weight, const Var& bias, Conv2dOptions options = {}) {
    const kernels::ConvGeometry g = detail::conv2d_geometry(x, weight, bias, options);
    const int64_t N = x.shape()[0], K = weight.shape()[0];
    const int64_t R = g.col_rows(), P = g.col_cols();
    const int64_t groups = detail::conv2d_image_groups(N);

    Tensor y = Tensor::uninitialized({N, K, g.out_h, g.out_w});
    {
        const float* xp = x.value().data();
        const float* wp = weight.value().data();
        const float* bp = bias.defined() ? bias.value().data() : nullptr;
        float* yp = y.data();
        if (detail::conv2d_integer(g, x, weight, bp, yp, [](int64_t) {})) {
            // done: the quantized operands' exact sum
        } else if (kernels::direct_conv_applies(g)) {
            detail::conv2d_direct(g, x.value(), weight.value(), bp, yp, [](int64_t, int64_t, int64_t) {});
        } else {
            parallel_split(N, groups, [&](int64_t, int64_t first, int64_t last) {
                Tensor col = g.is_pointwise() ? Tensor() : Tensor::uninitialized({R, P});
                for (int64_t n = first; n < last; ++n) {
                    const float* x_n = xp + n * g.image_size();
                    if (!g.is_pointwise()) kernels::im2col(g, x_n, col.data());
                    float* y_n = yp + n * K * P;
                    kernels::gemm_nn(K, P, R, wp, g.is_pointwise() ? x_n : col.data(), y_n, false);
                    if (bp)
                        for (int64_t k = 0; k < K; ++k)
                            for (int64_t p = 0; p < P; ++p) y_n[k * P + p] += bp[k];
                }
            });
        }
    }

    Var out = op_result(std::move(y), {&x, &weight, &bias});
    if (!out.requires_grad()) return out;
    tape().record([x, weight, bias, out, g, N, K, groups] {
        if (!out.has_grad()) return;
        const bool need_dx = x.requires_grad(), need_dw = weight.requires_grad(),
                   need_db = bias.requires_grad();
        const int64_t R = g.col_rows(), P = g.col_cols();
        const float* xp = x.value().data();
        const float* wp = weight.value().data();
        const float* dy = out.grad().data();
        // Gradients are fetched (created) here, outside the parallel loop.
        bool dx_fresh = false;  // a new dx is written, not added to (every path below covers each image)
        float* dx = need_dx ? x.grad_for_write(dx_fresh).data() : nullptr;
        const bool dw_direct = need_dw && kernels::direct_weight_grad_applies(g, K);
        const bool dw_sliding = dw_direct && kernels::sliding_weight_grad_applies(g, K);  // stride 1: no copies
        const kernels::ConvGeometry g_dw = kernels::weight_grad_copies_geometry(g);  // its copies are at stride 1
        Tensor dw_parts = need_dw ? Tensor::zeros({groups, K, R}) : Tensor();  // [groups, R, K] if dw_direct
        Tensor db_parts = need_db ? Tensor::zeros({groups, K}) : Tensor();

        // The "same"-padding case of dx: dy_n is convolved with the flipped kernel (see above).
        const bool dx_by_conv = need_dx && !g.is_pointwise() && g.stride == 1 &&
                                g.kernel_h == 2 * g.padding + 1 && g.kernel_w == 2 * g.padding + 1;
        const kernels::ConvGeometry gt =
            kernels::ConvGeometry::make(K, g.out_h, g.out_w, g.kernel_h, g.kernel_w, 1, g.padding);
        const bool dx_direct = dx_by_conv && kernels::direct_conv_applies(gt);
        // Wf as a [K*kh*kw, C] array, for the direct kernel and (transposed by gemm_tn) for im2col + GEMM
        const Tensor flipped = dx_by_conv ? kernels::pack_weights_for_direct(weight.value(), true) : Tensor();

        parallel_split(N, groups, [&](int64_t group, int64_t first, int64_t last) {
            const bool use_col = need_dw && !g.is_pointwise() && !dw_direct;
            const bool use_dcol = need_dx && !g.is_pointwise() && !dx_by_conv;
            Tensor col = use_col                   ? Tensor::uninitialized({R, P})
                         : dw_direct && !dw_sliding ? Tensor::uninitialized({kernels::tap_copies_size(g_dw)})
                                                    : Tensor();
            Tensor dy_t = dw_sliding  ? Tensor::uninitialized({kernels::padded_dy_size(g, K)})
                          : dw_direct ? Tensor::uninitialized({P, K})
                                      : Tensor();  // dy_n transposed
            Tensor dcol = use_dcol ? Tensor::uninitialized({R, P}) : Tensor();
            Tensor dy_col = dx_direct    ? Tensor::uninitialized({kernels::tap_copies_size(gt)})
                            : dx_by_conv ? Tensor::uninitialized({gt.col_rows(), gt.col_cols()})
                                         : Tensor();
            for (int64_t n = first; n < last; ++n) {
                const float* dy_n = dy + n * K * P;
                if (need_dx) {  // dx_n += col2im(W^T dy_n); for a pointwise conv col2im is the identity
                    float* dx_n = dx + n * g.image_size();
                    if (dx_direct) {  // the same convolution, by the direct kernel
                        kernels::make_tap_copies(gt, dy_n, dy_col.data());
                        kernels::direct_conv_image(gt, dy_col.data(), flipped.data(), g.channels, nullptr, dx_n, !dx_fresh);
                    } else if (dx_by_conv) {  // dx_n += Wf im2col(dy_n)
                        kernels::im2col(gt, dy_n, dy_col.data());
                        kernels::gemm_tn(g.channels, gt.col_cols(), gt.col_rows(), flipped.data(), dy_col.data(), dx_n,
                                         !dx_fresh);
                    } else if (use_dcol) {
                        kernels::gemm_tn(R, P, K, wp, dy_n, dcol.data(), false);
                        if (dx_fresh) std::fill(dx_n, dx_n + g.image_size(), 0.0f);  // col2im only adds
                        kernels::col2im_add(g, dcol.data(), dx_n);
                    } else {
                        kernels::gemm_tn(R, P, K, wp, dy_n, dx_n, !dx_fresh);
                    }
                }
                if (dw_sliding) {  // dW^T_group += the sliding window's sum for image n
                    kernels::transpose_dy_padded(g, K, dy_n, dy_t.data());
                    kernels::sliding_weight_grad_image(g, xp + n * g.image_size(), dy_t.data(), K,
                                                       dw_parts.data() + group * R * K);
                } else if (dw_direct) {  // dW^T_group += the direct kernel's sum for image n
                    kernels::make_tap_copies(g_dw, xp + n * g.image_size(), col.data());
                    kernels::transpose(K, P, dy_n, dy_t.data());
                    kernels::direct_weight_grad_image(g, col.data(), dy_t.data(), K, dw_parts.data() + group * R * K);
                } else if (need_dw) {  // dW_group += dy_n col_n^T
                    const float* x_n = xp + n * g.image_size();
                    if (use_col) kernels::im2col(g, x_n, col.data());
                    kernels::gemm_nt(K, R, P, dy_n, use_col ? col.data() : x_n,
                                     dw_parts.data() + group * K * R, true);
                }
                if (need_db) {  // db_group[k] += sum over the pixels of dy_n[k]
                    float* db_group = db_parts.data() + group * K;
                    for (int64_t k = 0; k < K; ++k) {
                        float sum = 0.0f;
                        for (int64_t p = 0; p < P; ++p) sum += dy_n[k * P + p];
                        db_group[k] += sum;
                    }
                }
            }
        });

        // The group partials, added in group order: the same bits for any thread count.
        auto add_parts = [groups](Tensor& parts, const Var& param, bool transposed) {
            const int64_t size = parts.numel() / groups;
            for (int64_t p = 1; p < groups; ++p)
                kernels::accumulate(size, parts.data(), parts.data() + p * size);
            if (transposed) {  // [R, K] -> [K, R]
                const int64_t rows = size / param.value().dim(0), cols = param.value().dim(0);
                Tensor sum = Tensor::uninitialized({cols, rows});
                kernels::transpose(rows, cols, parts.data(), sum.data());
                kernels::accumulate(size, param.grad_for_accumulate().data(), sum.data());
            } else {
                kernels::accumulate(size, param.grad_for_accumulate().data(), parts.data());
            }
        };
        if (need_dw) add_parts(dw_parts, weight, dw_direct);
        if (need_db) add_parts(db_parts, bias, false);
    });
    return out;
}

}  // namespace speq

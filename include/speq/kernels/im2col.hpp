// speq/kernels/im2col.hpp: unfolding image patches into columns, so a convolution becomes a GEMM.
//
// For one image x: [C, H, W] and a kernel of size kh x kw, im2col writes the matrix
//
//   col[(c*kh + i)*kw + j,  oh*W' + ow] = x[c, oh*stride - padding + i, ow*stride - padding + j]
//
// (0 where the index falls in the zero padding), of shape [C*kh*kw, H'*W']. Then the convolution
// of that image is   y[K, H'*W'] = weight[K, C*kh*kw] * col.   col2im_add is the adjoint
// (transpose) of im2col: it adds every column entry back onto the pixel it was copied from,
// which is how the gradient of the columns becomes the gradient of the image.
//
// im2col and col2im_add take a fast path for stride 1 with "same" width (out_w == width, e.g. 3x3
// with padding 1, every 3x3 conv of a ResNet except the downsampling ones): there a row of col is
// the whole image plane shifted by a constant offset, so it is one long copy plus zeroed edges.
// reference::im2col / reference::col2im_add are the general loops: the path for every other
// geometry, and what the tests compare the fast path with.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace speq::kernels {

// The sizes of one 2-D convolution, per image.
struct ConvGeometry {
    int64_t channels, height, width;  // input image [C, H, W]
    int64_t kernel_h, kernel_w;
    int64_t stride, padding;
    int64_t out_h, out_w;  // H' = (H + 2*padding - kh) / stride + 1, same for W'

    static ConvGeometry make(int64_t channels, int64_t height, int64_t width, int64_t kernel_h,
                             int64_t kernel_w, int64_t stride, int64_t padding) {
        return {channels, height,  width,
                kernel_h, kernel_w, stride,
                padding,  (height + 2 * padding - kernel_h) / stride + 1,
                (width + 2 * padding - kernel_w) / stride + 1};
    }
    int64_t col_rows() const { return channels * kernel_h * kernel_w; }  // C*kh*kw
    int64_t col_cols() const { return out_h * out_w; }                   // H'*W'
    int64_t image_size() const { return channels * height * width; }
    // im2col is the identity here: the image already is its column matrix.
    bool is_pointwise() const { return kernel_h == 1 && kernel_w == 1 && stride == 1 && padding == 0; }

    // For kernel column j: the output columns ow whose input column iw = ow*stride - padding + j
    // lies inside the image are exactly [first, last).
    void valid_out_cols(int64_t j, int64_t& first, int64_t& last) const {
        const int64_t offset = j - padding;  // iw = ow*stride + offset
        first = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
        last = offset >= width ? 0 : (width - 1 - offset) / stride + 1;
        first = std::min(first, out_w);
        last = std::clamp(last, first, out_w);
    }
};

// True when a row of col is the image plane shifted by a constant: stride 1, out_w == width.
inline bool is_shifted_copy(const ConvGeometry& g) { return g.stride == 1 && g.out_w == g.width; }

namespace reference {
// col[C*kh*kw, H'*W'] = the patches of image[C, H, W] (see the top of this file).
inline void im2col(const ConvGeometry& g, const float* image, float* col) {
    for (int64_t c = 0; c < g.channels; ++c) {
        const float* plane = image + c * g.height * g.width;
        for (int64_t i = 0; i < g.kernel_h; ++i) {
            for (int64_t j = 0; j < g.kernel_w; ++j) {
                int64_t first, last;
                g.valid_out_cols(j, first, last);
                float* row = col + ((c * g.kernel_h + i) * g.kernel_w + j) * g.col_cols();
                for (int64_t oh = 0; oh < g.out_h; ++oh) {
                    float* out = row + oh * g.out_w;
                    const int64_t ih = oh * g.stride - g.padding + i;
                    if (ih < 0 || ih >= g.height) {
                        std::fill(out, out + g.out_w, 0.0f);
                        continue;
                    }
                    std::fill(out, out + first, 0.0f);
                    std::fill(out + last, out + g.out_w, 0.0f);
                    if (last <= first) continue;
                    // x[c, ih, iw] for ow = first, first + 1, ...: in[0], in[stride], ...
                    const float* in = plane + ih * g.width + first * g.stride + j - g.padding;
                    if (g.stride == 1) {
                        std::memcpy(out + first, in, sizeof(float) * (last - first));
                    } else {
                        for (int64_t ow = first; ow < last; ++ow) out[ow] = in[(ow - first) * g.stride];
                    }
                }
            }
        }
    }
}

// image[C, H, W] += im2col^T(col): every entry of col is added to the pixel it came from;
// entries that came from the zero padding are dropped.
inline void col2im_add(const ConvGeometry& g, const float* col, float* image) {
    for (int64_t c = 0; c < g.channels; ++c) {
        float* plane = image + c * g.height * g.width;
        for (int64_t i = 0; i < g.kernel_h; ++i) {
            for (int64_t j = 0; j < g.kernel_w; ++j) {
                int64_t first, last;
                g.valid_out_cols(j, first, last);
                const float* row = col + ((c * g.kernel_h + i) * g.kernel_w + j) * g.col_cols();
                for (int64_t oh = 0; oh < g.out_h; ++oh) {
                    const int64_t ih = oh * g.stride - g.padding + i;
                    if (ih < 0 || ih >= g.height) continue;
                    if (last <= first) continue;
                    const float* in = row + oh * g.out_w;
                    float* out = plane + ih * g.width + first * g.stride + j - g.padding;  // as in im2col
                    for (int64_t ow = first; ow < last; ++ow) out[(ow - first) * g.stride] += in[ow];
                }
            }
        }
    }
}

}  // namespace reference

// col[C*kh*kw, H'*W'] = the patches of image[C, H, W] (see the top of this file).
inline void im2col(const ConvGeometry& g, const float* image, float* col) {
    if (!is_shifted_copy(g)) return reference::im2col(g, image, col);
    const int64_t W = g.width, plane_size = g.height * g.width;
    for (int64_t c = 0; c < g.channels; ++c) {
        const float* plane = image + c * plane_size;
        for (int64_t i = 0; i < g.kernel_h; ++i) {
            // Output rows oh whose input row ih = oh + i - padding lies in the image: [oh_lo, oh_hi).
            const int64_t oh_lo = std::clamp<int64_t>(g.padding - i, 0, g.out_h);
            const int64_t oh_hi = std::clamp<int64_t>(g.height + g.padding - i, oh_lo, g.out_h);
            for (int64_t j = 0; j < g.kernel_w; ++j) {
                float* row = col + ((c * g.kernel_h + i) * g.kernel_w + j) * g.col_cols();
                // row[oh*W + ow] = plane[oh*W + ow + shift] wherever the pixel is inside the image.
                const int64_t shift = (i - g.padding) * W + (j - g.padding);
                std::fill(row, row + oh_lo * W, 0.0f);
                std::fill(row + oh_hi * W, row + g.out_h * W, 0.0f);
                // One copy for all valid rows, clamped to the plane; what it gets wrong (or skips)
                // lies in the edge columns, which are zeroed next.
                const int64_t q0 = std::max(oh_lo * W, -shift), q1 = std::min(oh_hi * W, plane_size - shift);
                if (q1 > q0) std::memcpy(row + q0, plane + q0 + shift, sizeof(float) * (q1 - q0));
                int64_t first, last;
                g.valid_out_cols(j, first, last);
                // Column by column: the edges are only `padding` wide, and a fill per image row
                // would be a library call per one or two floats.
                for (int64_t ow = 0; ow < first; ++ow)
                    for (int64_t oh = oh_lo; oh < oh_hi; ++oh) row[oh * W + ow] = 0.0f;
                for (int64_t ow = last; ow < W; ++ow)
                    for (int64_t oh = oh_lo; oh < oh_hi; ++oh) row[oh * W + ow] = 0.0f;
            }
        }
    }
}

// image[C, H, W] += im2col^T(col): every entry of col is added to the pixel it came from;
// entries that came from the zero padding are dropped.
inline void col2im_add(const ConvGeometry& g, const float* col, float* image) {
    if (!is_shifted_copy(g)) return reference::col2im_add(g, col, image);
    const int64_t W = g.width;
    for (int64_t c = 0; c < g.channels; ++c) {
        float* plane = image + c * g.height * W;
        for (int64_t i = 0; i < g.kernel_h; ++i) {
            const int64_t oh_lo = std::clamp<int64_t>(g.padding - i, 0, g.out_h);
            const int64_t oh_hi = std::clamp<int64_t>(g.height + g.padding - i, oh_lo, g.out_h);
            for (int64_t j = 0; j < g.kernel_w; ++j) {
                const float* row = col + ((c * g.kernel_h + i) * g.kernel_w + j) * g.col_cols();
                const int64_t shift = (i - g.padding) * W + (j - g.padding);
                int64_t first, last;
                g.valid_out_cols(j, first, last);
                // Row by row (the edge columns must be skipped); each inner loop is contiguous.
                for (int64_t oh = oh_lo; oh < oh_hi; ++oh) {
                    const float* in = row + oh * W + first;
                    float* out = plane + oh * W + first + shift;
                    for (int64_t k = 0; k < last - first; ++k) out[k] += in[k];
                }
            }
        }
    }
}

}  // namespace speq::kernels

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

}  // namespace speq::kernels

// CUDA kernels of fmnist-models (`--features cuda`), compiled to PTX by build.rs with nvcc and
// launched from src/cuda.rs as candle custom operations. All f32, all on candle's stream.
//
// - The LSTM: the whole recurrence forward in one launch and back in one launch. Images never
//   meet in the recurrence, so each block of threads owns a few images from the first step to
//   the last, with their states in shared memory and a barrier of its own threads only between
//   the two halves of a step (gates, then the state update); the weights stay in L2.
// - Adam/AdamW over a flat buffer of parameters: one pass writes the new parameters and both
//   moments.
// - Bias + 2x2 max-pooling + ReLU after a convolution, forward and backward.

#include <stdint.h>

// Images per block of the LSTM kernels: with 4H threads (512 for H = 128) each thread owns one
// gate unit for all of them, and then one (image, unit) pair of the state update.
#define LSTM_IMAGES 4

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

// dst[c][r] = src[r][c] for a row-major [rows, cols] matrix.
extern "C" __global__ void fmnist_transpose(const float *src, float *dst, int rows, int cols) {
    int n = rows * cols;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += gridDim.x * blockDim.x) {
        int r = idx / cols, c = idx % cols;
        dst[c * rows + r] = src[idx];
    }
}

// The recurrence over x [B, T, I] from a zero state, gate order i, f, g, o (PyTorch's).
// w_in_t: [W_ih | b]^T, [I + 1, 4H]; w_hh_t: W_hh^T, [H, 4H] (read along the gates, so that
// a warp's loads are consecutive). Writes the last hidden states h_last [B, H] and, when
// `save` is set, what the backward pass reads, batch-major: the inputs with their 1
// [B, T, I + 1], the activated gates [B, T, 4H], the cell and hidden state before each step
// [B, T, H] and the cell's tanh after it [B, T, H].
extern "C" __global__ void fmnist_lstm_forward(
    const float *x, const float *w_in_t, const float *w_hh_t, int batch, int steps, int inputs,
    int hidden, float *h_last, int save, float *saved_inputs, float *gates, float *cells,
    float *hiddens, float *tanh_cells) {
    extern __shared__ float shared[];
    const int g4 = 4 * hidden;
    float *h = shared;                          // [LSTM_IMAGES, H]
    float *c = h + LSTM_IMAGES * hidden;        // [LSTM_IMAGES, H]
    float *act = c + LSTM_IMAGES * hidden;      // [LSTM_IMAGES, 4H]
    float *xs = act + LSTM_IMAGES * g4;         // [LSTM_IMAGES, I]
    const int first = blockIdx.x * LSTM_IMAGES;
    const int n = min(LSTM_IMAGES, batch - first);
    for (int k = threadIdx.x; k < LSTM_IMAGES * hidden; k += blockDim.x) {
        h[k] = 0.0f;
        c[k] = 0.0f;
    }
    for (int t = 0; t < steps; ++t) {
        for (int k = threadIdx.x; k < n * inputs; k += blockDim.x) {
            int img = k / inputs, col = k % inputs;
            float v = x[((size_t)(first + img) * steps + t) * inputs + col];
            xs[k] = v;
            if (save) saved_inputs[((size_t)(first + img) * steps + t) * (inputs + 1) + col] = v;
        }
        if (save) {
            for (int img = threadIdx.x; img < n; img += blockDim.x)
                saved_inputs[((size_t)(first + img) * steps + t) * (inputs + 1) + inputs] = 1.0f;
        }
        __syncthreads();
        // Pre-activations of every gate unit, for each image of the block.
        for (int g = threadIdx.x; g < g4; g += blockDim.x) {
            float acc[LSTM_IMAGES];
            float bias = w_in_t[(size_t)inputs * g4 + g];
            for (int img = 0; img < LSTM_IMAGES; ++img) acc[img] = bias;
            for (int k = 0; k < inputs; ++k) {
                float w = w_in_t[(size_t)k * g4 + g];
                for (int img = 0; img < LSTM_IMAGES; ++img)
                    if (img < n) acc[img] += w * xs[img * inputs + k];
            }
            for (int k = 0; k < hidden; ++k) {
                float w = w_hh_t[(size_t)k * g4 + g];
                for (int img = 0; img < LSTM_IMAGES; ++img) acc[img] += w * h[img * hidden + k];
            }
            const bool cell_gate = g >= 2 * hidden && g < 3 * hidden;
            for (int img = 0; img < n; ++img) {
                float a = cell_gate ? tanhf(acc[img]) : sigmoidf(acc[img]);
                act[img * g4 + g] = a;
                if (save) gates[((size_t)(first + img) * steps + t) * g4 + g] = a;
            }
        }
        __syncthreads();
        // The state update of every (image, unit).
        for (int k = threadIdx.x; k < n * hidden; k += blockDim.x) {
            int img = k / hidden, j = k % hidden;
            const float *a = act + img * g4;
            float c_prev = c[k];
            float cell = a[hidden + j] * c_prev + a[j] * a[2 * hidden + j];
            float tc = tanhf(cell);
            size_t state = ((size_t)(first + img) * steps + t) * hidden + j;
            if (save) {
                cells[state] = c_prev;
                hiddens[state] = h[k];
                tanh_cells[state] = tc;
            }
            c[k] = cell;
            h[k] = a[3 * hidden + j] * tc;
        }
        __syncthreads();
    }
    for (int k = threadIdx.x; k < n * hidden; k += blockDim.x)
        h_last[(size_t)first * hidden + k] = h[k];
}

// Back through every step: from the gradient of the last hidden states dh_last [B, H] and
// what the forward pass kept (the activated gates, the cells before each step and their tanh
// after it), the gates' pre-activation gradients d_gates [B, T, 4H]. w_hh: [4H, H].
extern "C" __global__ void fmnist_lstm_backward(
    const float *dh_last, const float *w_hh, int batch, int steps, int hidden,
    const float *gates, const float *cells, const float *tanh_cells, float *d_gates) {
    extern __shared__ float shared[];
    const int g4 = 4 * hidden;
    float *dh = shared;                      // [LSTM_IMAGES, H]
    float *dc = dh + LSTM_IMAGES * hidden;   // [LSTM_IMAGES, H]
    float *dz = dc + LSTM_IMAGES * hidden;   // [LSTM_IMAGES, 4H]
    const int first = blockIdx.x * LSTM_IMAGES;
    const int n = min(LSTM_IMAGES, batch - first);
    for (int k = threadIdx.x; k < LSTM_IMAGES * hidden; k += blockDim.x) {
        dh[k] = k < n * hidden ? dh_last[(size_t)first * hidden + k] : 0.0f;
        dc[k] = 0.0f;
    }
    for (int img = 0; img < LSTM_IMAGES; ++img)
        for (int g = threadIdx.x; g < g4; g += blockDim.x) dz[img * g4 + g] = 0.0f;
    __syncthreads();
    for (int t = steps - 1; t >= 0; --t) {
        for (int k = threadIdx.x; k < n * hidden; k += blockDim.x) {
            int img = k / hidden, j = k % hidden;
            size_t row = ((size_t)(first + img) * steps + t) * g4;
            size_t state = ((size_t)(first + img) * steps + t) * hidden + j;
            float i = gates[row + j], f = gates[row + hidden + j];
            float cell = gates[row + 2 * hidden + j], o = gates[row + 3 * hidden + j];
            float tc = tanh_cells[state];
            float d_h = dh[k];
            float total = dc[k] + d_h * o * (1.0f - tc * tc);
            float di = total * cell * i * (1.0f - i);
            float df = total * cells[state] * f * (1.0f - f);
            float dg = total * i * (1.0f - cell * cell);
            float d_o = d_h * tc * o * (1.0f - o);
            d_gates[row + j] = di;
            d_gates[row + hidden + j] = df;
            d_gates[row + 2 * hidden + j] = dg;
            d_gates[row + 3 * hidden + j] = d_o;
            float *z = dz + img * g4;
            z[j] = di;
            z[hidden + j] = df;
            z[2 * hidden + j] = dg;
            z[3 * hidden + j] = d_o;
            dc[k] = total * f;
        }
        __syncthreads();
        if (t > 0) {
            // dh = this step's gate gradients . W_hh, for each image of the block.
            for (int k = threadIdx.x; k < LSTM_IMAGES * hidden; k += blockDim.x) {
                int img = k / hidden, j = k % hidden;
                const float *z = dz + img * g4;
                float acc = 0.0f;
                for (int g = 0; g < g4; ++g) acc += z[g] * w_hh[(size_t)g * hidden + j];
                dh[k] = acc;
            }
        }
        __syncthreads();
    }
}

// One Adam (`decoupled` 0) or AdamW (1) update of a flat buffer at step t, in the order of
// fmnist-train's generic update: g' = g + wd·θ (Adam), m = β1·m + (1-β1)·g',
// v = β2·v + (1-β2)·g'², θ' = base - lr/bc1 · m / (√v/√bc2 + ε) with base θ·(1 - lr·wd) for
// AdamW and θ for Adam. Writes θ', m, v to out [3, len].
extern "C" __global__ void fmnist_adam(
    const float *theta, const float *grad, const float *m, const float *v, float *out, int len,
    float lr, float beta1, float beta2, float eps, float wd, int decoupled, float bc1,
    float sqrt_bc2) {
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < len; k += gridDim.x * blockDim.x) {
        float th = theta[k];
        float g = grad[k];
        if (!decoupled && wd > 0.0f) g = g + th * wd;
        float m1 = m[k] * beta1 + g * (1.0f - beta1);
        float v1 = v[k] * beta2 + (g * g) * (1.0f - beta2);
        float denom = sqrtf(v1) / sqrt_bc2 + eps;
        float step = (m1 / denom) * (lr / bc1);
        float base = (decoupled && wd > 0.0f) ? th * (1.0f - lr * wd) : th;
        out[k] = base - step;
        out[len + k] = m1;
        out[2 * len + k] = v1;
    }
}

// relu(maxpool2x2(y + bias[c])) of y [N, C, H, W] into out [N, C, H/2, W/2] (odd sizes
// floored), with the place of each window's maximum (0..3, the first maximum in reading order)
// in argmax.
extern "C" __global__ void fmnist_bias_pool_relu(
    const float *y, const float *bias, float *out, uint8_t *argmax, int planes, int channels,
    int height, int width) {
    int ph = height / 2, pw = width / 2;
    int n = planes * ph * pw;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += gridDim.x * blockDim.x) {
        int plane = idx / (ph * pw), rest = idx % (ph * pw);
        int r = rest / pw, col = rest % pw;
        const float *p = y + (size_t)plane * height * width + (2 * r) * width + 2 * col;
        float best = p[0];
        int at = 0;
        if (p[1] > best) { best = p[1]; at = 1; }
        if (p[width] > best) { best = p[width]; at = 2; }
        if (p[width + 1] > best) { best = p[width + 1]; at = 3; }
        float b = bias ? bias[plane % channels] : 0.0f;
        float s = best + b;
        out[idx] = s > 0.0f ? s : 0.0f;
        argmax[idx] = (uint8_t)at;
    }
}

// The backward pass of fmnist_bias_pool_relu: each window's gradient (where the output is
// positive) to the place of its maximum in dy [N, C, H, W], zero elsewhere.
extern "C" __global__ void fmnist_bias_pool_relu_backward(
    const float *dout, const float *out, const uint8_t *argmax, float *dy, int planes,
    int height, int width) {
    int ph = height / 2, pw = width / 2;
    size_t n = (size_t)planes * height * width;
    for (size_t idx = blockIdx.x * blockDim.x + threadIdx.x; idx < n;
         idx += (size_t)gridDim.x * blockDim.x) {
        int plane = idx / (height * width), rest = idx % (height * width);
        int r = rest / width, col = rest % width;
        float g = 0.0f;
        if (r / 2 < ph && col / 2 < pw) {
            size_t w = ((size_t)plane * ph + r / 2) * pw + col / 2;
            int at = (r % 2) * 2 + col % 2;
            if (argmax[w] == at && out[w] > 0.0f) g = dout[w];
        }
        dy[idx] = g;
    }
}

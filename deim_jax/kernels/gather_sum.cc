// Weighted sums of gathered table rows, the inner loop of deformable attention's sampling, as XLA
// FFI handlers for CPU: out[n] = sum_k w[n, k] * table[rows[n, k]] and its two gradients. A row
// index outside [0, R) is clamped (as jnp.take(mode="clip")). Built by deim_jax/kernels/gather_sum.py.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

inline int64_t Clamp(int32_t r, int64_t num_rows) {
  return std::min<int64_t>(std::max<int64_t>(r, 0), num_rows - 1);
}

// table [R, C], rows [N, K], weights [N, K] -> out [N, C]
ffi::Error Forward(ffi::Buffer<ffi::F32> table, ffi::Buffer<ffi::S32> rows, ffi::Buffer<ffi::F32> weights,
                   ffi::ResultBuffer<ffi::F32> out) {
  const int64_t R = table.dimensions()[0], C = table.dimensions()[1];
  const int64_t N = rows.dimensions()[0], K = rows.dimensions()[1];
  const float* t = table.typed_data();
  const int32_t* r = rows.typed_data();
  const float* w = weights.typed_data();
  float* o = out->typed_data();
  for (int64_t n = 0; n < N; ++n) {
    float* on = o + n * C;
    std::fill(on, on + C, 0.0f);
    for (int64_t k = 0; k < K; ++k) {
      const float wk = w[n * K + k];
      const float* row = t + Clamp(r[n * K + k], R) * C;
      for (int64_t c = 0; c < C; ++c) on[c] += wk * row[c];
    }
  }
  return ffi::Error::Success();
}

// table [R, C], rows [N, K], g [N, C] -> d_weights [N, K] = <table[rows[n, k]], g[n]>
ffi::Error WeightsGrad(ffi::Buffer<ffi::F32> table, ffi::Buffer<ffi::S32> rows, ffi::Buffer<ffi::F32> g,
                       ffi::ResultBuffer<ffi::F32> d_weights) {
  const int64_t R = table.dimensions()[0], C = table.dimensions()[1];
  const int64_t N = rows.dimensions()[0], K = rows.dimensions()[1];
  const float* t = table.typed_data();
  const int32_t* r = rows.typed_data();
  const float* gd = g.typed_data();
  float* dw = d_weights->typed_data();
  for (int64_t n = 0; n < N; ++n) {
    const float* gn = gd + n * C;
    for (int64_t k = 0; k < K; ++k) {
      const float* row = t + Clamp(r[n * K + k], R) * C;
      float acc = 0.0f;
      for (int64_t c = 0; c < C; ++c) acc += row[c] * gn[c];
      dw[n * K + k] = acc;
    }
  }
  return ffi::Error::Success();
}

// rows [N, K], weights [N, K], g [N, C] -> d_table [R, C]: d_table[rows[n, k]] += w[n, k] * g[n]
ffi::Error TableGrad(ffi::Buffer<ffi::S32> rows, ffi::Buffer<ffi::F32> weights, ffi::Buffer<ffi::F32> g,
                     ffi::ResultBuffer<ffi::F32> d_table) {
  const int64_t R = d_table->dimensions()[0], C = d_table->dimensions()[1];
  const int64_t N = rows.dimensions()[0], K = rows.dimensions()[1];
  const int32_t* r = rows.typed_data();
  const float* w = weights.typed_data();
  const float* gd = g.typed_data();
  float* dt = d_table->typed_data();
  std::memset(dt, 0, sizeof(float) * R * C);
  for (int64_t n = 0; n < N; ++n) {
    const float* gn = gd + n * C;
    for (int64_t k = 0; k < K; ++k) {
      const float wk = w[n * K + k];
      float* row = dt + Clamp(r[n * K + k], R) * C;
      for (int64_t c = 0; c < C; ++c) row[c] += wk * gn[c];
    }
  }
  return ffi::Error::Success();
}

}  // namespace

// (table, rows, per-row weights or gradient) -> result: the forward and the weights' gradient
#define DEIM_TABLE_ROWS_BINDING            \
  ffi::Ffi::Bind()                         \
      .Arg<ffi::Buffer<ffi::F32>>()        \
      .Arg<ffi::Buffer<ffi::S32>>()        \
      .Arg<ffi::Buffer<ffi::F32>>()        \
      .Ret<ffi::Buffer<ffi::F32>>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(DeimGatherSumForward, Forward, DEIM_TABLE_ROWS_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(DeimGatherSumWeightsGrad, WeightsGrad, DEIM_TABLE_ROWS_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(DeimGatherSumTableGrad, TableGrad,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

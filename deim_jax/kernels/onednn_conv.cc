// oneDNN 2-D convolutions as XLA FFI handlers for CPU: forward, backward data and backward weights
// of a float32 convolution (dense or grouped; the groups follow from the input and weight shapes).
// Layouts are the model's: activations NHWC, weights HWIO; oneDNN picks its own weight layout and
// the handlers reorder to and from HWIO. Built and loaded by deim_jax/kernels/onednn.py.
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>

#include "dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Dims = ffi::Span<const int64_t>;
using Tag = memory::format_tag;
constexpr auto kF32 = memory::data_type::f32;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Logical oneDNN shapes (NCHW; weights OIHW, or GOIHW with groups) of one convolution, the strides
// of the user's HWIO weights in that order, and the conv's strides and paddings.
struct Geometry {
  memory::dims src, weights, weight_strides, dst, strides, pad_l, pad_r;
  bool operator<(const Geometry& o) const {
    return std::tie(src, weights, dst, strides, pad_l, pad_r) <
           std::tie(o.src, o.weights, o.dst, o.strides, o.pad_l, o.pad_r);
  }
};

Geometry MakeGeometry(Dims x, Dims w, Dims y, int64_t stride, int64_t top, int64_t bottom, int64_t left,
                      int64_t right) {
  const int64_t kh = w[0], kw = w[1], in = w[2], out = w[3], groups = x[3] / in;
  Geometry g{{x[0], x[3], x[1], x[2]}, {}, {}, {y[0], y[3], y[1], y[2]}, {stride, stride}, {top, left}, {bottom, right}};
  if (groups == 1) {
    g.weights = {out, in, kh, kw};
    g.weight_strides = {1, out, kw * in * out, in * out};
  } else {  // HWIO with the output channels of group j at [j * out / groups, (j + 1) * out / groups)
    g.weights = {groups, out / groups, in, kh, kw};
    g.weight_strides = {out / groups, 1, out, kw * in * out, in * out};
  }
  return g;
}

memory::desc Activations(const memory::dims& d) { return memory::desc(d, kF32, Tag::nhwc); }
memory::desc AnyWeights(const memory::dims& d) { return memory::desc(d, kF32, Tag::any); }
memory::desc UserWeights(const Geometry& g) { return memory::desc(g.weights, kF32, g.weight_strides); }

// Every primitive takes its scratch memory from the caller: oneDNN's own (library) scratchpad is
// shared between primitives and is not safe when several devices' threads run convolutions at once.
const dnnl::primitive_attr& UserScratchpad() {
  static const dnnl::primitive_attr attr = [] {
    dnnl::primitive_attr a;
    a.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    return a;
  }();
  return attr;
}

// Run `prim` (of descriptor `pd`) with `args` and a scratchpad of its own.
template <typename PrimitiveDesc>
void Execute(const dnnl::primitive& prim, const PrimitiveDesc& pd, std::unordered_map<int, memory> args,
             dnnl::stream& stream) {
  args.insert({DNNL_ARG_SCRATCHPAD, memory(pd.scratchpad_desc(), Engine())});
  prim.execute(stream, args);
}

// The three primitives of one geometry, made once (oneDNN generates code for each).
struct Primitives {
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_backward_data::primitive_desc data_pd;
  dnnl::convolution_backward_weights::primitive_desc weights_pd;
  dnnl::primitive fwd, data, weights;

  explicit Primitives(const Geometry& g) {
    const auto algo = dnnl::algorithm::convolution_direct;
    fwd_pd = dnnl::convolution_forward::primitive_desc(
        dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, algo, Activations(g.src),
                                        AnyWeights(g.weights), Activations(g.dst), g.strides, g.pad_l, g.pad_r),
        UserScratchpad(), Engine());
    data_pd = dnnl::convolution_backward_data::primitive_desc(
        dnnl::convolution_backward_data::desc(algo, Activations(g.src), AnyWeights(g.weights), Activations(g.dst),
                                              g.strides, g.pad_l, g.pad_r),
        UserScratchpad(), Engine(), fwd_pd);
    weights_pd = dnnl::convolution_backward_weights::primitive_desc(
        dnnl::convolution_backward_weights::desc(algo, Activations(g.src), AnyWeights(g.weights),
                                                 Activations(g.dst), g.strides, g.pad_l, g.pad_r),
        UserScratchpad(), Engine(), fwd_pd);
    fwd = dnnl::convolution_forward(fwd_pd);
    data = dnnl::convolution_backward_data(data_pd);
    weights = dnnl::convolution_backward_weights(weights_pd);
  }
};

const Primitives& Cached(const Geometry& g) {
  static std::mutex mutex;
  static std::map<Geometry, std::unique_ptr<Primitives>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[g];
  if (!slot) slot = std::make_unique<Primitives>(g);
  return *slot;
}

void Reorder(memory from, memory to, dnnl::stream& stream) {
  dnnl::reorder::primitive_desc pd(from, to, UserScratchpad());
  Execute(dnnl::reorder(pd), pd, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}}, stream);
}

// `user` in the layout `want`: the same memory when the layouts agree, else a reordered copy.
memory InLayout(memory user, const memory::desc& want, dnnl::stream& stream) {
  if (user.get_desc() == want) return user;
  memory out(want, Engine());
  Reorder(user, out, stream);
  return out;
}

template <typename Body>
ffi::Error Guarded(Body body) {
  try {
    dnnl::stream stream(Engine());
    body(stream);
    stream.wait();
    return ffi::Error::Success();
  } catch (const std::exception& e) {  // dnnl::error, or out of memory: an error, not a crash
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN convolution: ") + e.what());
  }
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y, int64_t stride,
                   int64_t top, int64_t bottom, int64_t left, int64_t right) {
  return Guarded([&](dnnl::stream& s) {
    const Geometry g = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), stride, top, bottom, left, right);
    const Primitives& p = Cached(g);
    memory src(Activations(g.src), Engine(), x.typed_data());
    memory dst(Activations(g.dst), Engine(), y->typed_data());
    memory weights = InLayout(memory(UserWeights(g), Engine(), w.typed_data()), p.fwd_pd.weights_desc(), s);
    Execute(p.fwd, p.fwd_pd, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, dst}}, s);
  });
}

ffi::Error BackwardData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx,
                        int64_t stride, int64_t top, int64_t bottom, int64_t left, int64_t right) {
  return Guarded([&](dnnl::stream& s) {
    const Geometry g = MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), stride, top, bottom, left, right);
    const Primitives& p = Cached(g);
    memory diff_dst(Activations(g.dst), Engine(), dy.typed_data());
    memory diff_src(Activations(g.src), Engine(), dx->typed_data());
    memory weights = InLayout(memory(UserWeights(g), Engine(), w.typed_data()), p.data_pd.weights_desc(), s);
    Execute(p.data, p.data_pd, {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DIFF_SRC, diff_src}},
            s);
  });
}

ffi::Error BackwardWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw,
                           int64_t stride, int64_t top, int64_t bottom, int64_t left, int64_t right) {
  return Guarded([&](dnnl::stream& s) {
    const Geometry g = MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), stride, top, bottom, left, right);
    const Primitives& p = Cached(g);
    memory src(Activations(g.src), Engine(), x.typed_data());
    memory diff_dst(Activations(g.dst), Engine(), dy.typed_data());
    memory user(UserWeights(g), Engine(), dw->typed_data());
    const bool same = p.weights_pd.diff_weights_desc() == user.get_desc();
    memory diff_weights = same ? user : memory(p.weights_pd.diff_weights_desc(), Engine());
    Execute(p.weights, p.weights_pd,
            {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DIFF_WEIGHTS, diff_weights}}, s);
    if (!same) Reorder(diff_weights, user, s);
  });
}

}  // namespace

// (first input, second input) -> result, with the stride and the four paddings as attributes.
#define DEIM_CONV_BINDING                                                                                  \
  ffi::Ffi::Bind()                                                                                         \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                        \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                        \
      .Ret<ffi::Buffer<ffi::F32>>()                                                                        \
      .Attr<int64_t>("stride")                                                                             \
      .Attr<int64_t>("pad_top")                                                                            \
      .Attr<int64_t>("pad_bottom")                                                                         \
      .Attr<int64_t>("pad_left")                                                                           \
      .Attr<int64_t>("pad_right")

XLA_FFI_DEFINE_HANDLER_SYMBOL(DeimConvForward, Forward, DEIM_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(DeimConvBackwardData, BackwardData, DEIM_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(DeimConvBackwardWeights, BackwardWeights, DEIM_CONV_BINDING);


// prunepass library kernels, oneDNN builds only: 2-D convolutions on channels-last (NHWC)
// activations through oneDNN's convolution primitive, with weights packed once at build time
// into the primitive's preferred (blocked) format, and the bias, activation and residual add
// that follow a convolution fused into it as post-ops.
//
//   prunepass.blas.dnnl_conv2d(x, w, bias, src1..., params, out)
//       x (N, H, W, C) and out (N, OH, OW, OC) float32 NHWC; w packed by dnnl_conv2d_pack;
//       bias OC values; one src1 (N, OH, OW, OC) per "add" post-op, in order.
//   prunepass.blas.dnnl_conv2d_plan(x_shape, oc, params) -> "floats hash kernel"
//       the packed weights' size in floats, a hash of their format, oneDNN's kernel name
//   prunepass.blas.dnnl_conv2d_pack(x_shape, w, params, out)
//       w plain (OC, IC/G, KH, KW) (G > 1: (G, OC/G, IC/G, KH, KW)) -> out, 1-D, packed
//
// params: R.shape([stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right, dilation_h,
//                  dilation_w, groups, kh, kw, format_hash, n_post, (kind, a, b) * n_post])
//   kind 1: clip(x, a, b), 2: add src1, 3: swish x * sigmoid(a * x), 4: sigmoid(x);
//   a, b: float32 bit patterns.
// A primitive is created on the first call with a shape (oneDNN compiles its kernel then) and
// kept for later calls. The packed format depends on the CPU: a model packed on another CPU
// fails with an error that says so (format_hash).
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/reflection/registry.h>

#include <oneapi/dnnl/dnnl.hpp>
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <memory>
#include <unordered_map>
#include <vector>

namespace {

using tvm::ffi::Shape;
using tvm::ffi::TensorView;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

constexpr int kFixed = 13;  // params before the post-ops
constexpr int kHash = 11;   // where the packed format's hash is
constexpr int64_t kClip = 1, kAdd = 2, kSwish = 3, kLogistic = 4;

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

float Bits(int64_t v) {
  const uint32_t u = static_cast<uint32_t>(v);
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

void Check(bool ok, const std::string& what) {
  if (!ok) TVM_FFI_THROW(ValueError) << "prunepass.blas.dnnl_conv2d: " << what;
}

float* Data(const TensorView& t, const char* what) {
  const DLDataType d = t.dtype();
  Check(d.code == kDLFloat && d.bits == 32 && d.lanes == 1,
        std::string(what) + " must be float32");
  Check(t.device().device_type == kDLCPU, std::string(what) + " must be on the CPU");
  Check(t.IsContiguous(), std::string(what) + " must be contiguous");
  return reinterpret_cast<float*>(static_cast<char*>(t.data_ptr()) + t.byte_offset());
}

// One convolution: input shape (NHWC), output channels, params
struct Conv {
  dnnl::memory::dims src, wei, bias, dst, strides, dilates, pad_l, pad_r;
  int64_t groups = 1;
  std::vector<std::array<int64_t, 3>> post;

  Conv(const int64_t* x, int64_t oc, const Shape& p) {
    Check(p.size() >= kFixed, "params too short");
    const int64_t n_post = p[kFixed - 1];
    Check(n_post >= 0 && static_cast<int64_t>(p.size()) == kFixed + 3 * n_post,
          "params do not match their post-op count");
    for (int64_t i = 0; i < n_post; ++i) {
      post.push_back({p[kFixed + 3 * i], p[kFixed + 3 * i + 1], p[kFixed + 3 * i + 2]});
      Check(post.back()[0] >= kClip && post.back()[0] <= kLogistic, "unknown post-op kind");
    }
    groups = p[8];
    const int64_t ic = x[3], kh = p[9], kw = p[10];
    Check(groups >= 1 && ic % groups == 0 && oc % groups == 0, "channels and groups disagree");
    Check(p[0] > 0 && p[1] > 0 && p[6] > 0 && p[7] > 0 && kh > 0 && kw > 0,
          "strides, dilations and kernel sizes must be positive");
    if (groups > 1) {
      wei = {groups, oc / groups, ic / groups, kh, kw};
    } else {
      wei = {oc, ic, kh, kw};
    }
    src = {x[0], ic, x[1], x[2]};
    bias = {oc};
    strides = {p[0], p[1]};
    dilates = {p[6] - 1, p[7] - 1};
    pad_l = {p[2], p[3]};
    pad_r = {p[4], p[5]};
    const int64_t oh = (x[1] + p[2] + p[4] - p[6] * (kh - 1) - 1) / p[0] + 1;
    const int64_t ow = (x[2] + p[3] + p[5] - p[7] * (kw - 1) - 1) / p[1] + 1;
    Check(oh > 0 && ow > 0, "the output would be empty");
    dst = {x[0], oc, oh, ow};
  }

  dnnl::memory::desc DstDesc() const { return dnnl::memory::desc(dst, dt::f32, tag::nhwc); }
  dnnl::memory::desc SrcDesc() const { return dnnl::memory::desc(src, dt::f32, tag::nhwc); }
  dnnl::memory::desc PlainWeights() const {
    return dnnl::memory::desc(wei, dt::f32, groups > 1 ? tag::goihw : tag::oihw);
  }

  dnnl::convolution_forward::primitive_desc Desc() const {
    dnnl::post_ops ops;
    for (const auto& op : post) {
      if (op[0] == kClip) {
        ops.append_eltwise(dnnl::algorithm::eltwise_clip, Bits(op[1]), Bits(op[2]));
      } else if (op[0] == kSwish) {
        ops.append_eltwise(dnnl::algorithm::eltwise_swish, Bits(op[1]), 0.0f);
      } else if (op[0] == kLogistic) {
        ops.append_eltwise(dnnl::algorithm::eltwise_logistic, 0.0f, 0.0f);
      } else {
        ops.append_binary(dnnl::algorithm::binary_add, DstDesc());
      }
    }
    dnnl::primitive_attr attr;
    attr.set_post_ops(ops);
    // the scratchpad is ours (Scratchpad), kept between calls, not allocated in each
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    return dnnl::convolution_forward::primitive_desc(
        Engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
        SrcDesc(), dnnl::memory::desc(wei, dt::f32, tag::any),
        dnnl::memory::desc(bias, dt::f32, tag::a), DstDesc(), strides, dilates, pad_l, pad_r,
        attr);
  }
};

// FNV-1a over integers, continuing from ``h``
template <typename Ints>
uint64_t Fnv(const Ints& values, uint64_t h = 1469598103934665603ull) {
  for (auto v : values) h = (h ^ static_cast<uint64_t>(v)) * 1099511628211ull;
  return h;
}

// a hash of a memory format (dims, strides, blocking): the same for the same CPU and oneDNN
int64_t FormatHash(const dnnl::memory::desc& md) {
  uint64_t h = Fnv(md.get_dims());
  h = Fnv(md.get_padded_dims(), h);
  h = Fnv(md.get_strides(), h);
  h = Fnv(md.get_inner_blks(), h);
  h = Fnv(md.get_inner_idxs(), h);
  return static_cast<int64_t>(h & 0x7fffffffffffull);  // fits a shape value exactly
}

// A convolution ready to run: its primitive, and memory objects whose data pointers each call
// sets (making them per call costs more than a small convolution's kernel)
struct Entry {
  dnnl::convolution_forward primitive;
  dnnl::memory::desc weights;
  dnnl::memory::desc scratchpad;
  dnnl::memory::dims dst;
  std::unordered_map<int, dnnl::memory> args;
  std::vector<int> src1_args;  // the args' keys of the add post-ops' operands, in order
};

struct KeyHash {
  size_t operator()(const std::vector<int64_t>& key) const {
    return static_cast<size_t>(Fnv(key));
  }
};

// oneDNN's errors as tvm-ffi errors (a dnnl::error must not cross the FFI boundary untyped)
template <typename F>
auto Guard(const char* what, F&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const dnnl::error& err) {
    TVM_FFI_THROW(RuntimeError) << "prunepass.blas." << what << ": oneDNN: " << err.what();
  }
}

// Per calling thread: the memory objects of an entry are rebound on every call.
Entry& Prepare(const int64_t* x, int64_t oc, const Shape& p) {
  thread_local std::unordered_map<std::vector<int64_t>, Entry, KeyHash> cache;
  std::vector<int64_t> key(x, x + 4);
  key.push_back(oc);
  key.insert(key.end(), p.begin(), p.end());
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  Conv conv(x, oc, p);
  auto pd = conv.Desc();
  Check(FormatHash(pd.weights_desc()) == p[kHash],
        "the weights were packed for another CPU or oneDNN version (their format differs "
        "from the one this CPU's kernel takes): compile the model again on this CPU");
  auto& engine = Engine();
  Entry entry{dnnl::convolution_forward(pd), pd.weights_desc(), pd.scratchpad_desc(),
              conv.dst, {}, {}};
  entry.args = {
      {DNNL_ARG_SCRATCHPAD, dnnl::memory(pd.scratchpad_desc(), engine, DNNL_MEMORY_NONE)},
      {DNNL_ARG_SRC, dnnl::memory(conv.SrcDesc(), engine, DNNL_MEMORY_NONE)},
      {DNNL_ARG_WEIGHTS, dnnl::memory(pd.weights_desc(), engine, DNNL_MEMORY_NONE)},
      {DNNL_ARG_BIAS, dnnl::memory(dnnl::memory::desc(conv.bias, dt::f32, tag::a), engine,
                                   DNNL_MEMORY_NONE)},
      {DNNL_ARG_DST, dnnl::memory(conv.DstDesc(), engine, DNNL_MEMORY_NONE)}};
  for (size_t i = 0; i < conv.post.size(); ++i) {
    if (conv.post[i][0] != kAdd) continue;
    const int arg = DNNL_ARG_ATTR_MULTIPLE_POST_OP(static_cast<int>(i)) | DNNL_ARG_SRC_1;
    entry.args.emplace(arg, dnnl::memory(conv.DstDesc(), engine, DNNL_MEMORY_NONE));
    entry.src1_args.push_back(arg);
  }
  return cache.emplace(std::move(key), std::move(entry)).first->second;
}

// oneDNN's OpenMP threads for a convolution: TVM_NUM_THREADS when set, as TVM's own kernels
// use, else OpenMP's default. Set before a primitive is made (it keeps the count it was made
// with) and before it runs: the GEMMs set the calling thread's count to 1 inside TVM's tasks,
// and the first of those runs on this thread, which left convolutions made after a matmul
// single-threaded (a second model in a process: 1.3 -> 2.2 ms).
const int g_threads = [] {  // read when the library is loaded, before anything sets it
  const char* env = std::getenv("TVM_NUM_THREADS");
  const int n = env != nullptr ? std::atoi(env) : 0;
  return n > 0 ? n : omp_get_max_threads();
}();

void SetThreads() {
  if (omp_get_max_threads() != g_threads) omp_set_num_threads(g_threads);
}

void Bind(Entry& entry, int arg, const TensorView& t, const char* what) {
  entry.args.at(arg).set_data_handle(Data(t, what));
}

// The calling thread's scratchpad, grown to the largest a convolution has asked for and kept
void* Scratchpad(size_t bytes) {
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<void, Free> buffer;
  thread_local size_t size = 0;
  if (bytes > size) {
    const size_t rounded = (bytes + 4095) / 4096 * 4096;
    buffer.reset(std::aligned_alloc(4096, rounded));
    Check(buffer != nullptr, "out of memory for the scratchpad");
    size = rounded;
  }
  return buffer.get();
}

void Run(tvm::ffi::PackedArgs args) {
  const int n = args.size();
  Check(n >= 5, "expects x, w, bias, [src1...], params, out");
  TensorView x = args[0].cast<TensorView>(), w = args[1].cast<TensorView>();
  TensorView bias = args[2].cast<TensorView>(), out = args[n - 1].cast<TensorView>();
  Shape p = args[n - 2].cast<Shape>();
  Check(x.ndim() == 4 && out.ndim() == 4, "x and out must be 4-D (NHWC)");
  const int64_t oc = out.shape()[3];
  Guard("dnnl_conv2d", [&] {
    SetThreads();
    Entry& entry = Prepare(x.shape().data(), oc, p);
    Check(static_cast<int>(entry.src1_args.size()) == n - 5, "one src1 per add post-op");
    Check(static_cast<size_t>(w.numel()) * sizeof(float) == entry.weights.get_size(),
          "packed weights of the wrong size");
    Check(bias.numel() == oc, "bias must have OC values");
    Check(out.shape()[0] == entry.dst[0] && out.shape()[1] == entry.dst[2] &&
          out.shape()[2] == entry.dst[3], "out's shape does not follow from x and params");
    entry.args.at(DNNL_ARG_SCRATCHPAD).set_data_handle(
        Scratchpad(std::max<size_t>(entry.scratchpad.get_size(), 1)));
    Bind(entry, DNNL_ARG_SRC, x, "x");
    Bind(entry, DNNL_ARG_WEIGHTS, w, "w");
    Bind(entry, DNNL_ARG_BIAS, bias, "bias");
    Bind(entry, DNNL_ARG_DST, out, "out");
    for (size_t i = 0; i < entry.src1_args.size(); ++i) {
      TensorView src1 = args[3 + static_cast<int>(i)].cast<TensorView>();
      Check(src1.numel() == out.numel(), "src1 must have out's shape");
      Bind(entry, entry.src1_args[i], src1, "src1");
    }
    thread_local dnnl::stream stream(Engine());
    entry.primitive.execute(stream, entry.args);
    stream.wait();
  });
}

std::string Plan(const Shape& x, int64_t oc, const Shape& p) {
  Check(x.size() == 4, "x_shape must be NHWC");
  return Guard("dnnl_conv2d_plan", [&] {
    SetThreads();  // as the call will have it
    Conv conv(x.data(), oc, p);
    auto pd = conv.Desc();
    std::ostringstream text;
    text << pd.weights_desc().get_size() / sizeof(float) << ' ' << FormatHash(pd.weights_desc())
         << ' ' << pd.impl_info_str();
    return text.str();
  });
}

void Pack(const Shape& x, TensorView w, const Shape& p, TensorView out) {
  Check(x.size() == 4, "x_shape must be NHWC");
  const int64_t groups = p.size() > 8 ? p[8] : 1;
  const int64_t oc = groups > 1 ? w.shape()[0] * w.shape()[1] : w.shape()[0];
  Guard("dnnl_conv2d_pack", [&] {
    SetThreads();
    Conv conv(x.data(), oc, p);
    Check(w.numel() == static_cast<int64_t>(conv.PlainWeights().get_size() / sizeof(float)),
          "w does not have the plain weights' shape");
    auto pd = conv.Desc();
    Check(static_cast<size_t>(out.numel()) * sizeof(float) == pd.weights_desc().get_size(),
          "out must have the packed size dnnl_conv2d_plan gives");
    auto& engine = Engine();
    dnnl::stream stream(engine);
    dnnl::memory plain(conv.PlainWeights(), engine, Data(w, "w"));
    dnnl::memory packed(pd.weights_desc(), engine, Data(out, "out"));
    dnnl::reorder(plain, packed).execute(stream, plain, packed);
    stream.wait();
  });
}

}  // namespace

TVM_FFI_STATIC_INIT_BLOCK() {
  namespace refl = tvm::ffi::reflection;
  refl::GlobalDef()
      .def_packed("prunepass.blas.dnnl_conv2d",
                  [](tvm::ffi::PackedArgs args, tvm::ffi::Any*) { Run(args); })
      .def("prunepass.blas.dnnl_conv2d_plan",
           [](Shape x, int64_t oc, Shape p) -> std::string { return Plan(x, oc, p); })
      .def("prunepass.blas.dnnl_conv2d_pack",
           [](Shape x, TensorView w, Shape p, TensorView out) { Pack(x, w, p, out); });
}

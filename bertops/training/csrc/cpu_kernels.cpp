// bertops's CPU training kernels (built by bertops/training/cpu_kernels.py), each one pass each way:
//
// The attention probabilities (bertops.training.attention_probs): forward: softmax(where(mask, scores * scale, bf16 min)) over the last dim, then the fast-dropout masks (keep where
// a 16-bit word >= threshold, kept values times keep_scale); returns the dropped probabilities in bf16 (the
// input of the product with V) and the probabilities in fp32 (saved for the backward). backward: the gradient
// of the scores from the gradient of the dropped probabilities. Vectorised with ATen's Vectorized<float>; the
// instruction set is the one the build is given (cpu_kernels.py passes torch's CPU capability).
//
// Dropout, residual add and LayerNorm (bertops.training.dropout_add_norm): forward: h = y * keep * keep_scale +
// residual (y bf16, the residual fp32), out = (h - mean) * rstd * gamma + beta in fp32, as autocast's layer_norm;
// returns out and the normalised h and rstd for the backward. backward: the gradients of y (bf16), the residual,
// gamma and beta.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define CPU_CAPABILITY_AVX512
#define CPU_CAPABILITY AVX512
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY_AVX2
#define CPU_CAPABILITY AVX2
#else
#define CPU_CAPABILITY DEFAULT
#endif
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/cpu/vec/functional.h>
#include <cmath>
#include <limits>
#include <vector>

using at::vec::Vectorized;
using VF = Vectorized<float>;

std::vector<at::Tensor> probs_forward(const at::Tensor& s, const c10::optional<at::Tensor>& mask, const at::Tensor& words,
                                      int64_t threshold, double scale, double keep_scale) {
  TORCH_CHECK(s.scalar_type() == at::kBFloat16 && s.is_contiguous() && s.dim() == 4);
  TORCH_CHECK(words.scalar_type() == at::kShort && words.is_contiguous() && words.sizes() == s.sizes());
  const int64_t H = s.size(1), Lq = s.size(2), Lk = s.size(3), rows = s.numel() / Lk;
  auto dropped = at::empty_like(s);
  auto probs = at::empty(s.sizes(), s.options().dtype(at::kFloat));
  const c10::BFloat16* S = s.data_ptr<c10::BFloat16>();
  const int16_t* W = words.data_ptr<int16_t>();
  c10::BFloat16* D = dropped.data_ptr<c10::BFloat16>();
  float* P = probs.data_ptr<float>();
  const bool* M = nullptr;
  at::Tensor m;
  if (mask.has_value()) {  // [B or 1, 1, Lq or 1, Lk]: one mask for every head
    m = *mask;
    TORCH_CHECK(m.scalar_type() == at::kBool && m.dim() == 4 && m.size(1) == 1 && m.size(3) == Lk && m.stride(3) == 1);
    TORCH_CHECK((m.size(0) == 1 || m.size(0) == s.size(0)) && (m.size(2) == 1 || m.size(2) == Lq));
    M = m.data_ptr<bool>();
  }
  const float fscale = scale, fks = keep_scale;
  const float fill = -3.3895313892515355e+38f;  // torch.finfo(torch.bfloat16).min
  const int16_t thr = threshold;
  // the mask as 0/1 floats, one row per (batch, query) it distinguishes
  const int64_t mB = M ? m.size(0) : 0, mQ = M ? m.size(2) : 0;
  std::vector<float> mf(M ? mB * mQ * Lk : 0);
  for (int64_t b = 0; b < mB; ++b)
    for (int64_t q = 0; q < mQ; ++q)
      for (int64_t j = 0; j < Lk; ++j) mf[(b * mQ + q) * Lk + j] = M[b * m.stride(0) + q * m.stride(2) + j] ? 1.f : 0.f;
  const float* MF = mf.data();
  const bool has_mask = M != nullptr;
  const int64_t mfb = mB == 1 ? 0 : mQ * Lk, mfq = mQ == 1 ? 0 : Lk;
  at::parallel_for(0, rows, 64, [=](int64_t begin, int64_t end) {
    std::vector<float> xs(Lk + VF::size(), 0.f);
    float* __restrict__ x = xs.data();
    const float sc = fscale, ksc = fks, fl = fill, th = float(thr);
    for (int64_t r = begin; r < end; ++r) {
      at::vec::convert(S + r * Lk, x, Lk);
      float mx = -std::numeric_limits<float>::infinity();
      if (has_mask) {
        const int64_t b = r / (H * Lq), q = r % Lq;
        const float* __restrict__ mrow = MF + b * mfb + q * mfq;
        #pragma omp simd reduction(max:mx)
        for (int64_t j = 0; j < Lk; ++j) {
          const float v = mrow[j] != 0.f ? x[j] * sc : fl;
          x[j] = v; mx = std::max(mx, v);
        }
      } else {
        #pragma omp simd reduction(max:mx)
        for (int64_t j = 0; j < Lk; ++j) { const float v = x[j] * sc; x[j] = v; mx = std::max(mx, v); }
      }
      const VF vmx(mx);
      for (int64_t j = 0; j < Lk; j += VF::size()) (VF::loadu(x + j) - vmx).exp_u20().store(x + j);
      float sum = 0.f;
      #pragma omp simd reduction(+:sum)
      for (int64_t j = 0; j < Lk; ++j) sum += x[j];
      const float inv = 1.f / sum;
      float* __restrict__ prow = P + r * Lk; const int16_t* __restrict__ wrow = W + r * Lk;
      #pragma omp simd
      for (int64_t k = 0; k < Lk; ++k) { const float p = x[k] * inv; prow[k] = p; x[k] = float(wrow[k]) >= th ? p * ksc : 0.f; }
      at::vec::convert(x, D + r * Lk, Lk);
    }
  });
  return {dropped, probs};
}

at::Tensor probs_backward(const at::Tensor& g, const at::Tensor& probs, const at::Tensor& words, int64_t threshold,
                          double scale, double keep_scale) {
  auto gc = g.contiguous();
  TORCH_CHECK(gc.scalar_type() == at::kBFloat16 && probs.is_contiguous() && gc.sizes() == probs.sizes());
  const int64_t Lk = probs.size(-1), rows = probs.numel() / Lk;
  auto out = at::empty_like(gc);
  const c10::BFloat16* G = gc.data_ptr<c10::BFloat16>(); const float* P = probs.data_ptr<float>();
  const int16_t* W = words.data_ptr<int16_t>(); c10::BFloat16* O = out.data_ptr<c10::BFloat16>();
  const float fscale = scale, fks = keep_scale; const int16_t thr = threshold;
  at::parallel_for(0, rows, 64, [=](int64_t begin, int64_t end) {
    std::vector<float> gps(Lk);
    float* __restrict__ gp = gps.data();
    const float sc = fscale, ksc = fks, th = float(thr);
    for (int64_t r = begin; r < end; ++r) {
      const float* prow = P + r * Lk; const int16_t* wrow = W + r * Lk;
      at::vec::convert(G + r * Lk, gp, Lk);
      float dot = 0.f;
      #pragma omp simd reduction(+:dot)
      for (int64_t j = 0; j < Lk; ++j) { const float v = float(wrow[j]) >= th ? gp[j] * ksc : 0.f; gp[j] = v; dot += v * prow[j]; }
      #pragma omp simd
      for (int64_t j = 0; j < Lk; ++j) gp[j] = prow[j] * (gp[j] - dot) * sc;
      at::vec::convert(gp, O + r * Lk, Lk);
    }
  });
  return out;
}

std::vector<at::Tensor> dropout_add_norm_forward(const at::Tensor& y, const at::Tensor& residual, const at::Tensor& words,
                                                 int64_t threshold, double keep_scale, const at::Tensor& gamma,
                                                 const at::Tensor& beta, double eps) {
  TORCH_CHECK(y.scalar_type() == at::kBFloat16 && y.is_contiguous());
  TORCH_CHECK(residual.scalar_type() == at::kFloat && residual.is_contiguous() && residual.sizes() == y.sizes());
  TORCH_CHECK(words.scalar_type() == at::kShort && words.is_contiguous() && words.sizes() == y.sizes());
  const int64_t C = y.size(-1), rows = y.numel() / C;
  TORCH_CHECK(gamma.scalar_type() == at::kFloat && beta.scalar_type() == at::kFloat && gamma.numel() == C &&
              beta.numel() == C && gamma.is_contiguous() && beta.is_contiguous());
  auto out = at::empty(y.sizes(), residual.options());
  auto xhat = at::empty(y.sizes(), residual.options());
  auto rstd = at::empty({rows}, residual.options());
  const c10::BFloat16* Y = y.data_ptr<c10::BFloat16>(); const float* R = residual.data_ptr<float>();
  const int16_t* W = words.data_ptr<int16_t>(); const float* G = gamma.data_ptr<float>();
  const float* Bt = beta.data_ptr<float>();
  float* O = out.data_ptr<float>(); float* X = xhat.data_ptr<float>(); float* RS = rstd.data_ptr<float>();
  const float ksc = keep_scale, th = float(threshold); const double e = eps;
  at::parallel_for(0, rows, 16, [=](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* __restrict__ x = X + r * C;
      const float* __restrict__ res = R + r * C; const int16_t* __restrict__ w = W + r * C;
      at::vec::convert(Y + r * C, x, C);
      float sum = 0.f;
      #pragma omp simd reduction(+:sum)
      for (int64_t j = 0; j < C; ++j) { const float h = (float(w[j]) >= th ? x[j] * ksc : 0.f) + res[j]; x[j] = h; sum += h; }
      const float mean = sum / C;
      float var = 0.f;
      #pragma omp simd reduction(+:var)
      for (int64_t j = 0; j < C; ++j) { const float d = x[j] - mean; var += d * d; }
      const float rs = 1.f / std::sqrt(var / C + float(e));
      RS[r] = rs;
      float* __restrict__ o = O + r * C;
      #pragma omp simd
      for (int64_t j = 0; j < C; ++j) { const float xh = (x[j] - mean) * rs; x[j] = xh; o[j] = xh * G[j] + Bt[j]; }
    }
  });
  return {out, xhat, rstd};
}

std::vector<at::Tensor> dropout_add_norm_backward(const at::Tensor& grad, const at::Tensor& xhat, const at::Tensor& rstd,
                                                  const at::Tensor& words, int64_t threshold, double keep_scale,
                                                  const at::Tensor& gamma) {
  auto g = grad.contiguous().to(at::kFloat);
  TORCH_CHECK(xhat.is_contiguous() && g.sizes() == xhat.sizes());
  const int64_t C = xhat.size(-1), rows = xhat.numel() / C;
  auto grad_res = at::empty(xhat.sizes(), xhat.options());
  auto grad_y = at::empty(xhat.sizes(), xhat.options().dtype(at::kBFloat16));
  const int nt = at::get_num_threads();
  auto partial = at::zeros({nt, 2, C}, xhat.options());  // per thread: gamma's and beta's gradients
  const float* GO = g.data_ptr<float>(); const float* X = xhat.data_ptr<float>(); const float* RS = rstd.data_ptr<float>();
  const int16_t* W = words.data_ptr<int16_t>(); const float* G = gamma.data_ptr<float>();
  float* GR = grad_res.data_ptr<float>(); c10::BFloat16* GY = grad_y.data_ptr<c10::BFloat16>();
  float* PT = partial.data_ptr<float>();
  const float ksc = keep_scale, th = float(threshold);
  at::parallel_for(0, rows, 16, [=](int64_t begin, int64_t end) {
    float* __restrict__ dg = PT + at::get_thread_num() * 2 * C;
    float* __restrict__ db = dg + C;
    std::vector<float> buf(C);
    float* __restrict__ t = buf.data();
    for (int64_t r = begin; r < end; ++r) {
      const float* __restrict__ go = GO + r * C; const float* __restrict__ x = X + r * C;
      const int16_t* __restrict__ w = W + r * C;
      float s1 = 0.f, s2 = 0.f;
      #pragma omp simd reduction(+:s1, s2)
      for (int64_t j = 0; j < C; ++j) {
        dg[j] += go[j] * x[j]; db[j] += go[j];
        const float gx = go[j] * G[j]; s1 += gx; s2 += gx * x[j];
      }
      const float m1 = s1 / C, m2 = s2 / C, rs = RS[r];
      float* __restrict__ gr = GR + r * C;
      #pragma omp simd
      for (int64_t j = 0; j < C; ++j) {
        const float dh = rs * (go[j] * G[j] - m1 - x[j] * m2);
        gr[j] = dh; t[j] = float(w[j]) >= th ? dh * ksc : 0.f;
      }
      at::vec::convert(t, GY + r * C, C);
    }
  });
  auto sums = partial.sum(0);
  return {grad_y, grad_res, sums[0], sums[1]};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dropout_add_norm_forward", &dropout_add_norm_forward, "LayerNorm(dropout(y) + residual), fp32 out");
  m.def("dropout_add_norm_backward", &dropout_add_norm_backward, "its gradients: y (bf16), residual, gamma, beta");
  m.def("probs_forward", &probs_forward, "scaled, masked softmax with fast-dropout masks (bf16 in; bf16, fp32 out)");
  m.def("probs_backward", &probs_backward, "the scores' gradient from the dropped probabilities' gradient");
}
